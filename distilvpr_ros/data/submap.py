"""LiDAR submaps: the scans within ±D metres of travel, accumulated into the current scan's frame.

The DistilVPR teacher read 20 m Oxford submaps (reference §2.3); a single 360° scan sees less, and fog's
shorter range hurts it most. :func:`accumulate_submap` is the one function that builds a submap, from
any indexable source of clouds and their poses (a run's ground-truth poses, or odometry: only relative
transforms matter, so any fixed world or odometry frame works):

* scans are taken outward from the centre scan, alternately ahead and behind, while the path length
  travelled from the centre (the sum of the steps between consecutive poses) is at most ``radius_m``;
* a missing or non-finite pose (an odometry gap) ends the walk in that direction, so the submap falls
  back to fewer scans, down to the centre scan alone (also when the centre pose itself is missing);
* memory is bounded: at most ``max_scans`` scans (the nearest in travel), points beyond
  ``max_range_m`` of the centre sensor dropped, an optional voxel filter (``voxel_m``) that keeps
  one point per voxel, the centre scan's first, and an optional cap ``max_points`` (every k-th point);
* ``radius_m = 0`` returns the centre scan unchanged.

Points of scan ``j`` go into the centre scan's sensor frame by
``inv(base_T_sensor) · inv(pose_c) · pose_j · base_T_sensor`` (poses are ``world_T_base``, the package
convention); the columns after x, y, z (intensity, ring, time) are copied unchanged.

:class:`SubmapSequence` wraps a :class:`~.sample.Sequence` so that every sample's cloud is its submap;
training, evaluation and map building then read submaps without other changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
from pydantic import Field

from ..config import Section
from .sample import Sample
from .sample import Sequence as SampleSequence


class SubmapConfig(Section):
    """How a submap is accumulated (``radius_m = 0``: single scans)."""

    radius_m: float = Field(0.0, ge=0, description="accumulate the scans within ± this path length (m); "
                            "a '20 m submap' is radius 10")
    max_scans: int = Field(11, ge=1, description="at most this many scans, the centre one included")
    max_range_m: float | None = Field(100.0, gt=0, description="drop points farther (planar) from the centre "
                                      "sensor (None: keep all)")
    voxel_m: float | None = Field(None, gt=0, description="keep one point per voxel of this side (None: no filter)")
    max_points: int | None = Field(None, ge=1, description="keep every k-th point, k = ceil(points / this), when "
                                   "the submap has more (None: keep all)")


def _finite_pose(pose: np.ndarray | None) -> bool:
    return pose is not None and np.shape(pose) == (4, 4) and bool(np.isfinite(pose).all())


def submap_members(poses: Sequence[np.ndarray | None] | np.ndarray, center: int, radius_m: float,
                   max_scans: int) -> list[int]:
    """Indices of the scans in the submap of ``center``, the centre first, then by travel from it.

    A missing or non-finite pose stops the walk in its direction (module doc).
    """
    n = len(poses)
    if not 0 <= center < n:
        raise IndexError(f"centre scan {center} out of range for {n} poses")
    if radius_m <= 0 or max_scans <= 1 or not _finite_pose(poses[center]):
        return [center]
    candidates: list[tuple[float, int]] = []
    for step in (1, -1):
        travelled, previous, j = 0.0, np.asarray(poses[center])[:3, 3], center + step
        while 0 <= j < n and _finite_pose(poses[j]):
            position = np.asarray(poses[j])[:3, 3]
            travelled += float(np.linalg.norm(position - previous))
            if travelled > radius_m:
                break
            candidates.append((travelled, j))
            previous, j = position, j + step
    candidates.sort()
    return [center] + [j for _, j in candidates[: max_scans - 1]]


def relative_transform(pose_center: np.ndarray, pose_other: np.ndarray,
                       base_T_sensor: np.ndarray | None = None) -> np.ndarray:
    """``sensor_center_T_sensor_other`` from two ``world_T_base`` poses and the sensor extrinsic."""
    center_T_other = np.linalg.solve(np.asarray(pose_center, dtype=np.float64), np.asarray(pose_other, np.float64))
    if base_T_sensor is None:
        return center_T_other
    base_T_sensor = np.asarray(base_T_sensor, dtype=np.float64)
    return np.linalg.solve(base_T_sensor, center_T_other @ base_T_sensor)


def voxel_filter(cloud: np.ndarray, voxel_m: float) -> np.ndarray:
    """The first point (in row order) of every occupied voxel of side ``voxel_m``."""
    if len(cloud) == 0:
        return cloud
    keys = np.floor(cloud[:, :3] / voxel_m).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, first = np.unique(flat, return_index=True)
    return cloud[np.sort(first)]


def accumulate_submap(clouds: Sequence[np.ndarray | None] | Callable[[int], np.ndarray | None],
                      poses: Sequence[np.ndarray | None] | np.ndarray, center: int,
                      cfg: SubmapConfig | None = None, base_T_sensor: np.ndarray | None = None) -> np.ndarray:
    """The submap of scan ``center`` as one ``N x C`` float32 cloud in the centre scan's sensor frame.

    Args:
        clouds: ``clouds[j]`` (or ``clouds(j)``) is scan ``j``, ``N_j x C`` in its sensor frame (``None``
            or empty: no points); only the member scans are read.
        poses: ``world_T_base`` of every scan (4x4; ``None`` or NaN where odometry is missing).
        center: the scan whose frame the submap is in.
        cfg: radius, scan and range bounds, voxel filter.
        base_T_sensor: sensor extrinsic (identity when None, i.e. poses of the sensor itself).
    """
    cfg = cfg or SubmapConfig()
    load = clouds if callable(clouds) else clouds.__getitem__
    members = submap_members(poses, center, cfg.radius_m, cfg.max_scans)
    first = load(center)
    if len(members) == 1 and cfg.voxel_m is None and cfg.radius_m <= 0:
        return first
    columns = first.shape[1] if first is not None and first.ndim == 2 else 4
    parts = []
    for j in members:
        cloud = first if j == center else load(j)
        if cloud is None or len(cloud) == 0:
            continue
        cloud = np.asarray(cloud, dtype=np.float32)
        if cloud.shape[1] != columns:
            raise ValueError(f"scan {j} has {cloud.shape[1]} columns, the centre scan {columns}")
        if j != center:
            T = relative_transform(poses[center], poses[j], base_T_sensor).astype(np.float32)
            cloud = cloud.copy()
            cloud[:, :3] = cloud[:, :3] @ T[:3, :3].T + T[:3, 3]
        if cfg.max_range_m is not None:
            cloud = cloud[cloud[:, 0] ** 2 + cloud[:, 1] ** 2 <= np.float32(cfg.max_range_m**2)]
        parts.append(cloud)
    submap = np.concatenate(parts) if parts else np.zeros((0, columns), dtype=np.float32)
    if cfg.voxel_m is not None:
        submap = voxel_filter(submap, cfg.voxel_m)
    if cfg.max_points is not None and len(submap) > cfg.max_points:
        submap = submap[:: -(-len(submap) // cfg.max_points)]
    return submap


class SubmapSequence:
    """A :class:`~.sample.Sequence` whose samples carry submaps instead of single scans.

    Poses, stamps, images and meta are the parent's; ``sample.cloud`` is :func:`accumulate_submap` of
    the parent's clouds around the sample, with the parent's poses (or ``poses``, e.g. odometry). The
    last ``cache_scans`` clouds read are kept, so a pass in order reads each scan from disk about once.
    """

    def __init__(self, parent: SampleSequence, cfg: SubmapConfig, base_T_sensor: np.ndarray | None = None,
                 poses: np.ndarray | None = None, cache_scans: int = 32):
        self.parent, self.cfg, self.base_T_sensor = parent, cfg, base_T_sensor
        self.run = parent.run
        self.timestamps = parent.timestamps
        self.poses = parent.poses
        self.odometry = np.asarray(parent.poses if poses is None else poses, dtype=np.float64)
        if len(self.odometry) != len(parent):
            raise ValueError(f"{len(self.odometry)} poses for {len(parent)} scans")
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_scans = max(cache_scans, cfg.max_scans)

    def __len__(self) -> int:
        return len(self.parent)

    def __repr__(self) -> str:
        return f"SubmapSequence({self.run!r}, frames={len(self)}, radius_m={self.cfg.radius_m})"

    def meta(self, i: int) -> dict:
        return self.parent.meta(i)

    def cloud(self, j: int) -> np.ndarray | None:
        """The parent's scan ``j`` (cached)."""
        if j in self._cache:
            self._cache.move_to_end(j)
            return self._cache[j]
        parent_cloud = getattr(self.parent, "cloud", None)
        cloud = parent_cloud(j) if callable(parent_cloud) else self.parent[j].cloud
        self._cache[j] = cloud
        if len(self._cache) > self._cache_scans:
            self._cache.popitem(last=False)
        return cloud

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.run}: index {i} out of range for {n} frames")
        i %= n
        sample = self.parent[i]
        self._cache[i] = sample.cloud
        sample.cloud = accumulate_submap(self.cloud, self.odometry, i, self.cfg, self.base_T_sensor)
        return sample
