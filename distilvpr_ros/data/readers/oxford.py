"""Oxford RobotCar in the PointNetVLAD benchmark layout, with optional camera images (MinkLoc++ layout).

On disk (``root`` is ``benchmark_datasets/oxford``; timestamps are UNIX microseconds)::

    <root>/<run>/pointcloud_20m/<timestamp>.bin               evaluation submaps
    <root>/<run>/pointcloud_locations_20m.csv                 timestamp,northing,easting
    <root>/<run>/pointcloud_20m_10overlap/<timestamp>.bin     training submaps (denser sampling)
    <root>/<run>/pointcloud_locations_20m_10overlap.csv
    <images_root>/<run>/stereo/centre/<timestamp>.png         centre stereo camera images

A submap ``.bin`` holds 4096 points as float64 ``x, y, z``, ground removed, centred and scaled to
[-1, 1] (20 m of road per submap). Images are RGB PNGs (MinkLoc++'s downsampled set) or raw RobotCar
Bayer PNGs (GBRG mosaic, demosaiced here); each submap takes the image nearest in time.

Poses put UTM easting/northing in ``pose[:2, 3]``; the CSVs carry no heading, so the rotation is the
identity (place ground truth uses positions only).

:func:`build_training_tuples` rebuilds the content of PointNetVLAD's training pickles from the CSVs —
for every training submap, the submaps within 10 m (positives, itself excluded) and within 50 m
(non-negatives, itself included; negatives are all the others) — with submaps inside the four
150 m test squares (:data:`TEST_REGION_CENTRES`) left out, as the benchmark's training split does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from ..errors import DataError
from .sensor_files import read_bin_cloud, read_csv_columns, read_image_file
from ..msg_codec import nearest_stamps
from ..sample import Sample, Sequence

Variant = Literal["20m", "20m_10overlap"]

# Centres (northing, easting) of PointNetVLAD's Oxford test squares and their half width (metres).
TEST_REGION_CENTRES = np.array(
    [
        [5735712.768124, 620084.402381],
        [5735611.299219, 620540.270327],
        [5735237.358209, 620543.094379],
        [5734749.303802, 619932.693364],
    ]
)
TEST_REGION_HALF_WIDTH = 150.0
BAYER_PATTERN = "gbrg"  # RobotCar stereo camera


def in_test_region(northing: np.ndarray, easting: np.ndarray) -> np.ndarray:
    """True where a position lies strictly inside one of the benchmark's test squares."""
    pos = np.stack([np.asarray(northing, float), np.asarray(easting, float)], axis=-1)
    inside = np.abs(pos[..., None, :] - TEST_REGION_CENTRES) < TEST_REGION_HALF_WIDTH
    return inside.all(axis=-1).any(axis=-1)


def list_runs(root: Path, variant: Variant = "20m") -> list[str]:
    """Runs under ``root`` that have the location CSV of ``variant``, sorted (= chronological)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "Oxford benchmark folder not found")
    return sorted(p.parent.name for p in root.glob(f"*/pointcloud_locations_{variant}.csv"))


class OxfordRun:
    """One RobotCar run (a :class:`~distilvpr_ros.data.sample.Sequence` of submaps, images optional)."""

    def __init__(
        self,
        root: Path,
        run: str,
        variant: Variant = "20m",
        images_root: Path | None = None,
        image_max_dt: float = 1.0,
    ):
        if variant not in ("20m", "20m_10overlap"):
            raise ValueError(f"variant must be '20m' or '20m_10overlap', not {variant!r}")
        self.root = Path(root)
        self.run = run
        self.variant = variant
        self.cloud_dir = self.root / run / f"pointcloud_{variant}"
        csv = read_csv_columns(
            self.root / run / f"pointcloud_locations_{variant}.csv", ("timestamp", "northing", "easting")
        )
        self.timestamps_us = np.rint(csv["timestamp"]).astype(np.int64)
        self.timestamps = self.timestamps_us * 1e-6
        self.poses = np.repeat(np.eye(4)[None], len(self.timestamps), axis=0)
        self.poses[:, 0, 3] = csv["easting"]
        self.poses[:, 1, 3] = csv["northing"]
        self.image_paths: list[Path | None] = [None] * len(self)
        if images_root is not None:
            self.image_paths = self._pair_images(Path(images_root) / run / "stereo" / "centre", image_max_dt)

    def _pair_images(self, folder: Path, max_dt: float) -> list[Path | None]:
        if not folder.is_dir():
            raise DataError(folder, "image folder not found")
        files = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not files:
            raise DataError(folder, "no <timestamp>.png images in folder")
        image_us = np.array([int(p.stem) for p in files], dtype=np.int64)
        nearest, dt_us = nearest_stamps(self.timestamps_us, image_us)
        close = dt_us <= max_dt * 1e6
        return [files[j] if ok else None for j, ok in zip(nearest, close)]

    def cloud_path(self, i: int) -> Path:
        return self.cloud_dir / f"{self.timestamps_us[i]}.bin"

    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Sample:
        i = range(len(self))[i]
        image_path = self.image_paths[i]
        return Sample(
            image=None if image_path is None else read_image_file(image_path, bayer=BAYER_PATTERN),
            cloud=read_bin_cloud(self.cloud_path(i), "<f8", 3),
            pose=self.poses[i].copy(),
            timestamp=float(self.timestamps[i]),
            run=self.run,
            index=i,
            meta={"cloud_path": str(self.cloud_path(i)), "image_path": None if image_path is None else str(image_path)},
        )


@dataclass
class TrainingTuples:
    """Training tuples over the frames of several sequences, indexed ``0..M-1`` in sequence order.

    ``run[k]``/``frame[k]`` locate tuple ``k`` (``sequences[...][frame[k]]``); ``positives[k]`` and
    ``non_negatives[k]`` are sorted int arrays of tuple indices.
    """

    run: list[str]
    frame: np.ndarray
    positions: np.ndarray  # (M, 2) easting, northing
    positives: list[np.ndarray]
    non_negatives: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.frame)

    def negatives(self, k: int) -> np.ndarray:
        """All tuple indices farther than the non-negative radius from tuple ``k``."""
        return np.setdiff1d(np.arange(len(self)), self.non_negatives[k], assume_unique=True)


def build_training_tuples(
    sequences: list[Sequence],
    positive_m: float = 10.0,
    non_negative_m: float = 50.0,
    exclude_test_regions: bool = True,
) -> TrainingTuples:
    """PointNetVLAD training tuples from the planar positions of ``sequences`` (all runs pooled).

    Distances are inclusive (``<= radius``), as ``sklearn``'s ``KDTree.query_radius`` in the original
    scripts. ``exclude_test_regions`` drops frames inside the Oxford test squares first.
    """
    runs, frames, positions = [], [], []
    for seq in sequences:
        xy = np.asarray(seq.poses)[:, :2, 3]
        keep = ~in_test_region(xy[:, 1], xy[:, 0]) if exclude_test_regions else np.ones(len(xy), bool)
        idx = np.flatnonzero(keep)
        runs += [seq.run] * len(idx)
        frames.append(idx)
        positions.append(xy[idx])
    frame = np.concatenate(frames) if frames else np.zeros(0, int)
    xy = np.concatenate(positions) if positions else np.zeros((0, 2))
    tree = cKDTree(xy)
    within_pos = tree.query_ball_point(xy, positive_m, return_sorted=True)
    within_non_neg = tree.query_ball_point(xy, non_negative_m, return_sorted=True)
    positives = [np.setdiff1d(np.asarray(p, dtype=np.int64), [k]) for k, p in enumerate(within_pos)]
    non_negatives = [np.asarray(n, dtype=np.int64) for n in within_non_neg]
    return TrainingTuples(runs, frame, xy, positives, non_negatives)
