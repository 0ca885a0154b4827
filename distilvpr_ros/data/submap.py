"""LiDAR submaps: the scans over ``D`` metres of travel, accumulated into the current scan's frame.

The DistilVPR teacher read 20 m Oxford submaps (reference §2.3); a single 360° scan sees less, and fog's
shorter range hurts it most. One parameter says how much: :attr:`SubmapConfig.length_m` = ``D``, the metres
of travel a submap spans (``submap.length_m`` in the node config, ``data.submap.length_m`` in training,
``--submap-length-m`` on ``evaluate`` / ``build-map``); ``D = 0`` keeps single scans. ``window`` says where
the ``D`` metres lie: ``trailing`` (default) = the ``D`` metres driven up to and including the scan, the only
window a robot can build online (the mapping node and ``build-map`` always use it); ``centred`` = ``±D/2``
around the scan (offline data only, like Oxford's submaps).

:func:`accumulate_submap` is the one function that builds a submap, from any indexable source of clouds
and their poses (a run's ground-truth poses, or odometry: only relative transforms matter, so any fixed
world or odometry frame works):

* scans are taken outward from the centre scan (``centred``: alternately ahead and behind; ``trailing``:
  behind only) while the path length travelled from the centre scan (the sum of the steps between
  consecutive poses) is at most ``D/2`` (``centred``) or ``D`` (``trailing``);
* a missing or non-finite pose (an odometry gap) ends the walk in that direction, so the submap falls
  back to fewer scans, down to the centre scan alone (also when the centre pose itself is missing);
* memory is bounded: at most ``max_scans`` scans (the nearest in travel), points beyond
  ``max_range_m`` of the centre sensor dropped, an optional voxel filter (``voxel_m``) that keeps
  one point per voxel, the centre scan's first, and an optional cap ``max_points`` (every k-th point);
* ``length_m = 0`` returns the centre scan unchanged.

Points of scan ``j`` go into the centre scan's sensor frame by
``inv(base_T_sensor) · inv(pose_c) · pose_j · base_T_sensor`` (poses are ``world_T_base``, the package
convention); the columns after x, y, z (intensity, ring, time) are copied unchanged.

* :class:`SubmapSequence` wraps a :class:`~.sample.Sequence` so that every sample's cloud is its submap;
  training and evaluation then read submaps without other changes (:func:`with_submaps` wraps a list,
  with the LiDAR extrinsic of :func:`lidar_extrinsic`).
* :class:`TrailingSubmaps` is the live form (the mapping node, ``build-map``): keyframe scans are fed one
  at a time with their odometry pose and an odometry *epoch* (a number that changes whenever the odometry
  frame may have changed: a reset, a clock jump, a frame without odometry); a keyframe's submap is its
  trailing window over the earlier keyframes of the same epoch, built by :func:`accumulate_submap`, so it
  equals the offline ``trailing`` submap over the same keyframes. It keeps at most ``max_scans - 1`` earlier
  scans (bounded memory) and counts the times an epoch change cut the window short (``breaks``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import Field

from ..config import Section
from .sample import Sample, frame_index
from .sample import Sequence as SampleSequence


SubmapWindow = Literal["trailing", "centred"]


class SubmapConfig(Section):
    """How a submap is accumulated (``length_m = 0``: single scans)."""

    length_m: float = Field(0.0, ge=0, le=1000.0, description="D: metres of travel a LiDAR submap spans (0: single "
                            "scans); a '20 m submap' is 20")
    window: SubmapWindow = Field("trailing", description="trailing: the D m driven up to the scan (online; the "
                                 "mapping node and build-map); centred: +-D/2 around it (offline data only)")
    max_scans: int = Field(11, ge=1, le=1000, description="at most this many scans, the current one included")
    max_range_m: float | None = Field(100.0, gt=0, le=1e4, description="drop points farther (planar) from the "
                                      "current sensor (None: keep all)")
    voxel_m: float | None = Field(None, gt=0, le=100.0, description="keep one point per voxel of this side "
                                  "(None: no filter)")
    max_points: int | None = Field(None, ge=1, le=100_000_000, description="keep every k-th point, k = ceil(points "
                                   "/ this), when the submap has more (None: keep all)")
    scan_voxel_m: float | None = Field(None, gt=0, le=100.0, description="keep one point per voxel of this side in "
                                       "every scan before it joins a submap, once per scan (the live form filters on "
                                       "insertion: faster assembly; None: no filter)")

    @property
    def enabled(self) -> bool:
        return self.length_m > 0


def _finite_pose(pose: np.ndarray | None) -> bool:
    return pose is not None and np.shape(pose) == (4, 4) and bool(np.isfinite(pose).all())


def submap_members(poses: Sequence[np.ndarray | None] | np.ndarray, center: int, length_m: float,
                   max_scans: int, window: SubmapWindow = "trailing") -> list[int]:
    """Indices of the scans in the submap of ``center``, the centre first, then by travel from it.

    ``window``: ``trailing`` walks back up to ``length_m`` of travel, ``centred`` both ways up to
    ``length_m / 2``. A missing or non-finite pose stops the walk in its direction (module doc).
    """
    n = len(poses)
    if not 0 <= center < n:
        raise IndexError(f"centre scan {center} out of range for {n} poses")
    if window not in ("trailing", "centred"):
        raise ValueError(f"submap window must be 'trailing' or 'centred', got {window!r}")
    if length_m <= 0 or max_scans <= 1 or not _finite_pose(poses[center]):
        return [center]
    reach, steps = (length_m, (-1,)) if window == "trailing" else (length_m / 2, (1, -1))
    candidates: list[tuple[float, int]] = []
    for step in steps:
        travelled, previous, j = 0.0, np.asarray(poses[center])[:3, 3], center + step
        while 0 <= j < n and _finite_pose(poses[j]):
            position = np.asarray(poses[j])[:3, 3]
            travelled += float(np.linalg.norm(position - previous))
            if travelled > reach:
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
        cfg: length and window, scan and range bounds, voxel filters.
        base_T_sensor: sensor extrinsic (identity when None, i.e. poses of the sensor itself).
    """
    cfg = cfg or SubmapConfig()
    load = clouds if callable(clouds) else clouds.__getitem__
    members = submap_members(poses, center, cfg.length_m, cfg.max_scans, cfg.window)
    first = load(center)
    if len(members) == 1 and cfg.voxel_m is None and cfg.length_m <= 0:
        return first
    scans = {j: scan_points(first if j == center else load(j), cfg) for j in members}
    return _assemble(scans, poses, center, members, cfg, base_T_sensor)


def scan_points(cloud: np.ndarray | None, cfg: SubmapConfig) -> np.ndarray | None:
    """A scan as it joins submaps: ``scan_voxel_m``'s filter, once per scan (unchanged when it is None)."""
    if cloud is None or len(cloud) == 0 or cfg.scan_voxel_m is None:
        return cloud
    return voxel_filter(np.asarray(cloud), cfg.scan_voxel_m)


def _assemble(scans: dict[int, np.ndarray | None], poses, center: int, members: list[int], cfg: SubmapConfig,
              base_T_sensor: np.ndarray | None) -> np.ndarray:
    """The member scans (already through :func:`scan_points`) in the centre frame, written once into one
    preallocated array, then the range bound, the voxel filter and the point cap."""
    first = scans[center]
    columns = first.shape[1] if first is not None and first.ndim == 2 else 4
    parts = []
    for j in members:
        cloud = scans[j]
        if cloud is None or len(cloud) == 0:
            continue
        if cloud.shape[1] != columns:
            raise ValueError(f"scan {j} has {cloud.shape[1]} columns, the centre scan {columns}")
        parts.append((j, cloud))
    submap = np.empty((sum(len(c) for _, c in parts), columns), dtype=np.float32)
    start = 0
    for j, cloud in parts:
        end = start + len(cloud)
        if j == center:
            submap[start:end] = cloud
        else:
            T = relative_transform(poses[center], poses[j], base_T_sensor).astype(np.float32)
            submap[start:end, :3] = np.asarray(cloud[:, :3], dtype=np.float32) @ T[:3, :3].T + T[:3, 3]
            submap[start:end, 3:] = cloud[:, 3:]
        start = end
    if cfg.max_range_m is not None:
        submap = submap[submap[:, 0] ** 2 + submap[:, 1] ** 2 <= np.float32(cfg.max_range_m**2)]
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
        return f"SubmapSequence({self.run!r}, frames={len(self)}, length_m={self.cfg.length_m}, {self.cfg.window})"

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
        i = frame_index(self.run, i, len(self))
        sample = self.parent[i]
        self._cache[i] = sample.cloud
        sample.cloud = self.submap_cloud(i)
        return sample

    def submap_cloud(self, i: int) -> np.ndarray:
        """The submap of frame ``i`` alone (no image read)."""
        return accumulate_submap(self.cloud, self.odometry, i, self.cfg, self.base_T_sensor)


def lidar_extrinsic(sequence) -> np.ndarray | None:
    """``base_T_lidar`` of a sequence when it is known: its own ``T_base_lidar`` attribute, else the calibration
    of the synthetic world its run folder lies in (``world.json``); None (poses taken as the sensor's) else."""
    own = getattr(sequence, "T_base_lidar", None)
    if own is not None:
        return np.asarray(own, dtype=np.float64)
    run_dir = getattr(sequence, "run_dir", None) or getattr(getattr(sequence, "parent", None), "run_dir", None)
    if run_dir is None:
        return None
    from .synthetic import read_world_meta

    for folder in (Path(run_dir).parent, Path(run_dir).parent.parent):
        if (folder / "world.json").is_file():
            calibration = read_world_meta(folder).get("calibration", {})
            if "T_base_lidar" in calibration:
                return np.asarray(calibration["T_base_lidar"], dtype=np.float64)
    return None


def with_submaps(sequences: list, cfg: SubmapConfig | None) -> list:
    """``sequences`` with every cloud replaced by its submap (:class:`SubmapSequence`, each sequence's own
    poses and :func:`lidar_extrinsic`); unchanged when ``cfg`` is None or ``length_m`` is 0."""
    if cfg is None or not cfg.enabled:
        return list(sequences)
    return [SubmapSequence(seq, cfg, lidar_extrinsic(seq)) for seq in sequences]


@dataclass
class LiveSubmap:
    """One keyframe's submap from :class:`TrailingSubmaps`."""

    cloud: np.ndarray  # N x C in the keyframe's sensor frame
    scans: int  # scans accumulated, the keyframe's own included
    cut_short: bool  # an odometry epoch change dropped earlier scans that the window would have reached


class TrailingSubmaps:
    """Live trailing submaps over keyframe scans (module doc): :meth:`submap` builds one, :meth:`add` keeps the
    keyframe's scan for the next ones (call it once the keyframe is in the map).

    ``counts``: ``submaps`` built, ``breaks`` (kept scans dropped because the odometry epoch changed or the
    stamps went back), ``cut_short`` (submaps that start a new epoch, or reach back to the first scan after
    a break with less than ``length_m`` of travel: fewer scans than without the break, as far as the kept
    poses tell), ``last_scans`` (scans in the latest submap).
    """

    def __init__(self, cfg: SubmapConfig, base_T_sensor: np.ndarray | None = None) -> None:
        self.cfg = cfg.model_copy(update={"window": "trailing"})
        self.base_T_sensor = base_T_sensor
        self._scans: deque[tuple[float, np.ndarray, np.ndarray, int]] = deque()  # stamp, pose, cloud, epoch
        self._after_break = False  # the oldest kept scan is the first one after a break
        self._last: tuple[np.ndarray | None, np.ndarray | None] | None = None  # latest scan and its scan_points
        self.counts = {"submaps": 0, "breaks": 0, "cut_short": 0, "last_scans": 0}

    def __len__(self) -> int:
        return len(self._scans)

    def _continues(self, stamp: float, epoch: int) -> bool:
        """A keyframe at ``stamp`` / ``epoch`` continues the kept scans (same epoch, later stamp)."""
        return not self._scans or (self._scans[-1][3] == epoch and self._scans[-1][0] < stamp)

    def submap(self, stamp: float, pose: np.ndarray, cloud: np.ndarray, epoch: int = 0) -> LiveSubmap:
        """The trailing submap of a keyframe (nothing kept: see :meth:`add`)."""
        if not self.cfg.enabled:
            return LiveSubmap(cloud, 1, False)
        continues = self._continues(stamp, epoch)
        earlier = list(self._scans) if continues else []
        poses = [s[1] for s in earlier] + [np.asarray(pose, dtype=np.float64)]
        center = len(poses) - 1
        members = submap_members(poses, center, self.cfg.length_m, self.cfg.max_scans, "trailing")
        scans = {j: self._own(cloud) if j == center else earlier[j][2] for j in members}
        out = _assemble(scans, poses, center, members, self.cfg, self.base_T_sensor)
        if not continues:
            cut = True  # this keyframe starts a new epoch: none of the kept scans may join it
        else:  # the walk reached the first scan after a break with travel to spare
            path = [p[:3, 3] for p in poses[center + 1 - len(members):]]
            cut = (self._after_break and len(members) == len(poses) and len(members) < self.cfg.max_scans
                   and sum(float(np.linalg.norm(b - a)) for a, b in zip(path, path[1:])) < self.cfg.length_m)
        self.counts["submaps"] += 1
        self.counts["last_scans"] = len(members)
        self.counts["cut_short"] += int(cut)
        return LiveSubmap(out, len(members), cut)

    def add(self, stamp: float, pose: np.ndarray, cloud: np.ndarray, epoch: int = 0) -> None:
        """Keep a keyframe's scan; drop what no later trailing window can reach (more than ``length_m`` of
        travel back, or beyond ``max_scans``), and every kept scan when the keyframe does not continue them
        (another epoch, or a stamp not after theirs: counted in ``breaks``)."""
        if not self.cfg.enabled:
            return
        if not self._continues(stamp, epoch):
            self._scans.clear()
            self.counts["breaks"] += 1
            self._after_break = True
        self._scans.append((float(stamp), np.asarray(pose, dtype=np.float64), self._own(cloud), epoch))
        keep, travel = min(len(self._scans), self.cfg.max_scans - 1), 0.0
        for k in range(len(self._scans) - 2, max(len(self._scans) - 2 - keep, -1), -1):
            travel += float(np.linalg.norm(self._scans[k + 1][1][:3, 3] - self._scans[k][1][:3, 3]))
            if travel > self.cfg.length_m:
                keep = len(self._scans) - 1 - k
                break
        while len(self._scans) > keep:
            self._scans.popleft()
            self._after_break = False

    def _own(self, cloud) -> np.ndarray | None:
        """:func:`scan_points` of a keyframe's scan, computed once for its :meth:`submap` and :meth:`add`."""
        cloud = None if cloud is None else np.asarray(cloud)
        if self._last is None or self._last[0] is not cloud:
            self._last = (cloud, scan_points(cloud, self.cfg))
        return self._last[1]

    def reset(self) -> None:
        """Forget the kept scans (a new run)."""
        self._scans.clear()
        self._last = None
        self._after_break = False
