"""LiDAR verification: register a query scan (or submap) to a candidate's and accept on overlap and fit.

Both clouds are voxel-downsampled, then aligned with GICP by small_gicp or open3d (the config's
``backend``; ``benchmarks/verification.py`` compares them), from an initial guess: an explicit
``initial`` transform, else a rotation by ``yaw`` (a descriptor's yaw estimate), else identity.

The scores are computed the same way for both backends, after alignment, on the downsampled clouds
(scipy KD-tree), so thresholds do not depend on the library:

* ``inlier_ratio`` — fraction of source points with a target point within ``inlier_distance_m``;
* ``fitness`` — mean squared distance (m^2) of source points to their nearest target point, over the
  points with one within ``max_correspondence_m`` (PCL's ``getFitnessScore`` with that range; LIO-SAM
  accepts <= 0.3);
* ``rmse`` — RMS distance of the inliers (m);
* ``constraint`` — how well the inliers pin down the translation: the smallest over the largest
  eigenvalue of ``sum n n^T`` over the inliers' target normals (0: sliding along some direction is
  free, as in a straight corridor or an open field; 1: constrained equally in x, y and z).

The transform is ``target_T_source`` (source points into the target's frame), i.e.
``candidate_lidar_T_query_lidar``. Bad input (no points, too few after downsampling, a diverged
registration) gives a rejected :class:`Registration` with a reason; it never raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..data.geometry import transform_points
from .config import LidarVerificationConfig

try:
    import small_gicp
except ImportError:  # pragma: no cover - depends on the environment
    small_gicp = None

LIDAR_BACKENDS: tuple[str, ...] = ("small_gicp", "open3d")


@dataclass
class Registration:
    """Outcome of registering a query cloud to a candidate's."""

    accepted: bool
    reason: str  # why it was rejected; "" when accepted
    transform: np.ndarray | None = None  # target_T_source (4x4)
    fitness: float = float("inf")  # mean squared NN distance within the correspondence range (m^2)
    inlier_ratio: float = 0.0
    inliers: int = 0
    rmse: float = float("inf")  # RMS distance of the inliers (m)
    constraint: float = 0.0  # smallest / largest eigenvalue of the inliers' translation information
    source_points: int = 0  # after downsampling
    target_points: int = 0
    converged: bool = False
    iterations: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """What re-ranking sorts by: the inlier count."""
        return float(self.inliers)


def yaw_transform(yaw: float) -> np.ndarray:
    """4x4 rotation about z by ``yaw`` radians."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw).as_matrix()
    return T


def _xyz(cloud) -> np.ndarray:
    if cloud is None:
        return np.zeros((0, 3))
    pts = np.asarray(cloud, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        return np.zeros((0, 3))
    pts = pts[:, :3]
    return np.ascontiguousarray(pts[np.all(np.isfinite(pts), axis=1)])


def voxel_downsample(pts: np.ndarray, voxel: float) -> np.ndarray:
    """Centroid per occupied voxel (the same reduction for every backend)."""
    if len(pts) == 0:
        return pts
    keys = np.floor(pts / voxel).astype(np.int64)
    keys -= keys.min(0)
    lin = np.ravel_multi_index(keys.T, keys.max(0) + 1)  # one int per voxel: a 1-D unique is much faster
    _, inverse, counts = np.unique(lin, return_inverse=True, return_counts=True)
    sums = np.column_stack([np.bincount(inverse, weights=pts[:, k], minlength=len(counts)) for k in range(3)])
    return sums / counts[:, None]


def _translation_constraint(tgt: np.ndarray, tree: cKDTree, idx: np.ndarray, k: int = 8) -> float:
    """Smallest / largest eigenvalue of sum(n n^T) over the target normals at ``idx`` (PCA of k neighbours)."""
    idx = np.unique(idx)
    if len(idx) < 3 or len(tgt) < k:
        return 0.0
    _, nb = tree.query(tgt[idx], k=k)
    local = tgt[nb] - tgt[nb].mean(1, keepdims=True)
    _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", local, local))
    normals = vecs[:, :, 0]  # eigenvector of the smallest eigenvalue
    ev = np.linalg.eigvalsh(normals.T @ normals)
    return float(ev[0] / ev[-1]) if ev[-1] > 0 else 0.0


class LidarVerifier:
    """Registers clouds with one configuration and judges the result."""

    def __init__(self, config: LidarVerificationConfig | None = None):
        self.config = config or LidarVerificationConfig()
        if self.config.backend == "small_gicp" and small_gicp is None:
            raise ValueError("LiDAR backend 'small_gicp' requested but small_gicp is not installed "
                             "(pip install small_gicp), or choose backend 'open3d'")

    def register(self, source, target, initial: np.ndarray | None = None,
                 yaw: float | None = None) -> Registration:
        """Align ``source`` (query, N x >=3) to ``target`` (candidate); see the module doc."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            result = self._register(source, target, initial, yaw, timings)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError) as e:
            result = Registration(False, f"registration failed: {type(e).__name__}: {e}")
        timings["total"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms = timings
        return result

    def _register(self, source, target, initial, yaw, timings) -> Registration:
        cfg = self.config
        t = time.perf_counter()
        src = voxel_downsample(_xyz(source), cfg.voxel_m)
        tgt = voxel_downsample(_xyz(target), cfg.voxel_m)
        timings["downsample"] = (time.perf_counter() - t) * 1e3
        counts = dict(source_points=len(src), target_points=len(tgt))
        if len(src) < cfg.min_points or len(tgt) < cfg.min_points:
            return Registration(False, f"too few points after downsampling (source {len(src)}, target {len(tgt)}, "
                                       f"need {cfg.min_points})", **counts)
        if initial is not None:
            init = np.asarray(initial, dtype=np.float64)
            if init.shape != (4, 4) or not np.all(np.isfinite(init)):
                return Registration(False, "initial guess is not a finite 4x4 transform", **counts)
        else:
            init = yaw_transform(yaw) if yaw is not None else np.eye(4)
        t = time.perf_counter()
        if cfg.backend == "small_gicp":
            T, converged, iterations = self._small_gicp(src, tgt, init)
        else:
            T, converged, iterations = self._open3d(src, tgt, init)
        timings["align"] = (time.perf_counter() - t) * 1e3
        if not np.all(np.isfinite(T)) or abs(np.linalg.det(T[:3, :3]) - 1) > 1e-3:
            return Registration(False, "registration diverged (non-finite or non-rigid transform)", **counts)
        t = time.perf_counter()
        tree = cKDTree(tgt)
        d, j = tree.query(transform_points(T, src), k=1, distance_upper_bound=cfg.max_correspondence_m)
        near = np.isfinite(d)
        inl = d <= cfg.inlier_distance_m
        fitness = float(np.mean(d[near] ** 2)) if near.any() else float("inf")
        rmse = float(np.sqrt(np.mean(d[inl] ** 2))) if inl.any() else float("inf")
        constraint = _translation_constraint(tgt, tree, j[inl])
        timings["score"] = (time.perf_counter() - t) * 1e3
        out = Registration(False, "", T, fitness, float(inl.mean()), int(inl.sum()), rmse, constraint,
                           converged=converged, iterations=iterations, **counts)
        if out.inlier_ratio < cfg.min_inlier_ratio:
            out.reason = f"too little overlap (inlier ratio {out.inlier_ratio:.2f} < {cfg.min_inlier_ratio})"
        elif out.fitness > cfg.max_fitness:
            out.reason = f"poor fit (fitness {out.fitness:.3f} > {cfg.max_fitness} m^2)"
        elif out.constraint < cfg.min_constraint:
            out.reason = (f"degenerate geometry: translation weakly constrained (constraint {out.constraint:.3f} "
                          f"< {cfg.min_constraint})")
        else:
            out.accepted = True
        return out

    def _small_gicp(self, src, tgt, init):
        cfg = self.config
        target = small_gicp.PointCloud(tgt)
        source = small_gicp.PointCloud(src)
        tree = small_gicp.KdTree(target, num_threads=1)
        small_gicp.estimate_covariances(target, tree, num_neighbors=10, num_threads=1)
        small_gicp.estimate_covariances(source, num_neighbors=10, num_threads=1)
        r = small_gicp.align(target, source, tree, init_T_target_source=init, registration_type="GICP",
                             max_correspondence_distance=cfg.max_correspondence_m, num_threads=1,
                             max_iterations=cfg.max_iterations)
        return np.asarray(r.T_target_source, dtype=np.float64), bool(r.converged), int(r.iterations)

    def _open3d(self, src, tgt, init):
        import open3d as o3d  # heavy: imported only when this backend is used

        cfg = self.config
        reg = o3d.pipelines.registration
        s, t = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
        s.points, t.points = o3d.utility.Vector3dVector(src), o3d.utility.Vector3dVector(tgt)
        r = reg.registration_generalized_icp(
            s, t, cfg.max_correspondence_m, init, reg.TransformationEstimationForGeneralizedICP(),
            reg.ICPConvergenceCriteria(max_iteration=cfg.max_iterations))
        # open3d does not report iterations or convergence; a fitted transform counts as converged.
        return np.asarray(r.transformation, dtype=np.float64), r.fitness > 0, -1
