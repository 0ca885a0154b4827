"""Reader of the synthetic world folders written by :func:`distilvpr_ros.data.world.generate.generate_world`.

Each run is a :class:`SyntheticRun` implementing the :class:`~distilvpr_ros.data.sample.Sequence`
protocol: poses and stamps come from ``poses.csv`` at construction, images and clouds are loaded
lazily in ``__getitem__``. Poses are in the world's local map frame (x east, y north, z up; UTM =
origin + (x, y), the origin is in ``world.json``); the per-frame facts of ``poses.csv`` (UTM
easting/northing, direction, lane, condition, dynamic fraction, region, speed) are in
``Sample.meta``, together with ``frame`` (the file index; ``Sample.index`` is the position in the
possibly region-filtered sequence).

Only this module's light dependencies are needed (no open3d): reading works wherever the package
imports.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError
from .geometry import make_pose
from .sample import Sample, frame_index
from .world.layout import (CLOUDS_DIR, CSV_COLUMNS, IMAGES_DIR, POSES_CSV, RUN_JSON, RUNS_DIR, WORLD_JSON,
                           WORLD_VERSION, frame_name)

_INT_COLUMNS = ("index", "direction", "lane")
#: Distance along x between the map frames of the worlds of :func:`load_worlds` (m): 1000x any radius used.
WORLD_SPACING_M = 100_000.0
_STR_COLUMNS = ("condition", "region")


def read_world_meta(out_dir: Path) -> dict:
    """Contents of ``world.json`` (config, calibration, UTM origin, regions, runs)."""
    path = Path(out_dir) / WORLD_JSON
    meta = _read_json(path, "world description (is the world generated completely?)")
    version = meta.get("version")
    if not isinstance(version, int) or version > WORLD_VERSION:
        raise DataError(path, f"unsupported world version {version!r} (this reader knows <= {WORLD_VERSION})")
    return meta


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(path, f"missing {what}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"unreadable {what}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(path, f"{what} must be a JSON object")
    return data


def _read_poses_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DataError(path, "missing poses file") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"unreadable poses file: {e}") from e
    if rows and set(CSV_COLUMNS) - set(rows[0]):
        raise DataError(path, f"missing columns {sorted(set(CSV_COLUMNS) - set(rows[0]))}")
    cols: dict[str, np.ndarray] = {}
    try:
        for c in CSV_COLUMNS:
            values = [r[c] for r in rows]
            if any(v is None or v == "" for v in values):
                raise ValueError(f"empty value in column {c!r}")
            cols[c] = (np.array(values, dtype=str) if c in _STR_COLUMNS else
                       np.array(values, dtype=np.int64 if c in _INT_COLUMNS else np.float64))
    except ValueError as e:
        raise DataError(path, f"malformed poses file: {e}") from e
    return cols


class SyntheticRun:
    """One run of a generated world as a :class:`~distilvpr_ros.data.sample.Sequence`.

    ``regions`` keeps only the frames in those regions (``train``, ``val``, ``test``; ``gap`` for
    frames between regions); ``len`` is then the filtered count and ``frame_indices`` maps
    positions back to files.
    """

    def __init__(self, run_dir: Path, regions: set[str] | None = None, world: str | None = None,
                 offset_m: tuple[float, float] = (0.0, 0.0)):
        self.run_dir = Path(run_dir)
        self.info = _read_json(self.run_dir / RUN_JSON, "run description")
        #: The run's own id; ``run`` is ``<world>/<run_id>`` when the run belongs to a set of several worlds.
        self.run_id: str = str(self.info.get("run_id", self.run_dir.name))
        self.world = world
        self.run: str = self.run_id if world is None else f"{world}/{self.run_id}"
        #: Added to the map-frame x, y of every pose (several worlds: each in its own part of the plane).
        self.offset_m = (float(offset_m[0]), float(offset_m[1]))
        cols = _read_poses_csv(self.run_dir / POSES_CSV)
        keep = np.ones(len(cols["index"]), dtype=bool) if regions is None else np.isin(cols["region"], list(regions))
        self._cols = {k: v[keep] for k, v in cols.items()}
        self.frame_indices: np.ndarray = self._cols["index"]
        self.timestamps: np.ndarray = self._cols["timestamp"]
        xyz = np.stack([self._cols[c] for c in ("x", "y", "z")], axis=1)
        quat = np.stack([self._cols[c] for c in ("qx", "qy", "qz", "qw")], axis=1)
        self.poses: np.ndarray = (np.stack([make_pose(p, q) for p, q in zip(xyz, quat)]) if len(xyz)
                                  else np.zeros((0, 4, 4)))
        self.poses[:, 0, 3] += self.offset_m[0]
        self.poses[:, 1, 3] += self.offset_m[1]

    def __len__(self) -> int:
        return len(self.frame_indices)

    def __repr__(self) -> str:
        return f"SyntheticRun({self.run!r}, frames={len(self)})"

    def meta(self, i: int) -> dict:
        """Per-frame facts of position ``i`` (no sensor data is loaded)."""
        c = self._cols
        out = {k: c[k][i].item() for k in ("easting", "northing", "yaw", "direction", "lane", "condition",
                                           "dynamic_fraction", "region", "speed")}
        out["frame"] = int(self.frame_indices[i])
        if self.world is not None:
            out["world"] = self.world
        return out

    def image(self, i: int) -> np.ndarray:
        """RGB image (H, W, 3) uint8 of position ``i``."""
        path = self.run_dir / IMAGES_DIR / f"{frame_name(int(self.frame_indices[i]))}.png"
        if not path.is_file():
            raise DataError(path, "missing camera image")
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(path, "unreadable camera image (not a PNG?)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def cloud(self, i: int) -> np.ndarray:
        """LiDAR cloud (N, 6) float32 of position ``i`` in the LiDAR frame."""
        path = self.run_dir / CLOUDS_DIR / f"{frame_name(int(self.frame_indices[i]))}.npy"
        try:
            cloud = np.load(path, allow_pickle=False)
        except FileNotFoundError as e:
            raise DataError(path, "missing LiDAR cloud") from e
        except (OSError, ValueError, EOFError) as e:
            raise DataError(path, f"unreadable LiDAR cloud: {e}") from e
        if cloud.ndim != 2 or cloud.shape[1] != 6 or cloud.dtype != np.float32:
            raise DataError(path, f"expected an N x 6 float32 cloud, got {cloud.shape} {cloud.dtype}")
        return cloud

    def __getitem__(self, i: int) -> Sample:
        i = frame_index(self.run, i, len(self))
        return Sample(image=self.image(i), cloud=self.cloud(i), pose=self.poses[i].copy(),
                      timestamp=float(self.timestamps[i]), run=self.run, index=i, meta=self.meta(i))


def load_synthetic(out_dir: Path, regions: set[str] | None = None) -> list[SyntheticRun]:
    """All runs of a generated world, in generation order; optionally only frames of ``regions``."""
    out_dir = Path(out_dir)
    return [SyntheticRun(out_dir / RUNS_DIR / r, regions) for r in _run_ids(out_dir, read_world_meta(out_dir))]


def _run_ids(out_dir: Path, meta: dict) -> list[str]:
    try:
        return [r["run_id"] for r in meta["runs"]]
    except (KeyError, TypeError) as e:
        raise DataError(out_dir / WORLD_JSON, "world description lacks the run list") from e


def load_worlds(roots: list[Path], regions: set[str] | None = None) -> list[SyntheticRun]:
    """The runs of several generated worlds (towns), world after world, kept apart.

    One root reads exactly as :func:`load_synthetic`. With several, the runs of world ``k`` are named
    ``<folder name>/<run id>`` (``meta["world"]`` holds the folder name) and their poses are moved by
    ``k *`` :data:`WORLD_SPACING_M` along x: positions of different towns are then never within any
    ground-truth radius of each other, so no place of one town is a positive (or a true match) of another,
    and caches keyed by frames (run names, poses) tell the worlds apart. ``meta`` keeps each world's own
    UTM easting/northing. The same world twice (same folder, or the same seed and config) is refused: its
    frames would be the same places at different positions.
    """
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("no world folders given")
    if len(roots) == 1:
        return load_synthetic(roots[0], regions)
    runs: list[SyntheticRun] = []
    seen: dict[str, Path] = {}
    for k, root in enumerate(roots):
        meta = read_world_meta(root)
        identity = json.dumps({"seed": meta.get("seed"), "config": meta.get("config")}, sort_keys=True)
        if identity in seen or root.resolve() in seen.values():
            first = seen.get(identity, root)
            raise DataError(root, f"the same world as {first} (same seed and config): each town may appear once")
        if root.name in [r.name for r in roots[:k]]:
            raise DataError(root, "several worlds need distinct folder names (they prefix the run names)")
        seen[identity] = root.resolve()
        extent = meta.get("town", {}).get("extent")
        if extent is not None and max(abs(float(v)) for v in extent) >= WORLD_SPACING_M / 2:
            raise DataError(root / WORLD_JSON, f"town extent {extent} does not fit the {WORLD_SPACING_M:g} m "
                                               "spacing of several worlds")
        runs += [SyntheticRun(root / RUNS_DIR / r, regions, world=root.name, offset_m=(k * WORLD_SPACING_M, 0.0))
                 for r in _run_ids(root, meta)]
    return runs
