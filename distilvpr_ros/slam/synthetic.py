"""Loop closures made from ground truth, right and planted wrong ones: for tests, benchmarks and demos.

Right loops join a keyframe to the nearest earlier keyframe within ``radius_m`` that lies at least
``min_gap_s`` before it (a revisit, not a neighbour); their transform is the true ``match_T_query``
perturbed by noise drawn from the covariance they carry. Wrong loops join keyframes at least
``min_distance_m`` apart and claim a small relative transform (what a perceptual-aliasing match that
passed verification would report), with the same confident covariance.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .loops import LoopClosure, relative_transform


def loop_covariance(sigma_translation_m: float, sigma_rotation_deg: float) -> np.ndarray:
    """Diagonal 6x6 covariance, ROS order (x, y, z, rot_x, rot_y, rot_z)."""
    return np.diag([sigma_translation_m**2] * 3 + [np.deg2rad(sigma_rotation_deg) ** 2] * 3)


def perturb(T: np.ndarray, covariance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``T`` times a random right perturbation drawn from ``covariance`` (ROS order)."""
    e = rng.multivariate_normal(np.zeros(6), covariance)
    D = np.eye(4)
    D[:3, :3] = Rotation.from_rotvec(e[3:]).as_matrix()
    D[:3, 3] = e[:3]
    return T @ D


def revisit_pairs(stamps: np.ndarray, poses: np.ndarray, radius_m: float, min_gap_s: float) -> np.ndarray:
    """(M, 2) pairs ``(match, query)``: each query's nearest keyframe within ``radius_m`` and ``min_gap_s`` earlier."""
    xyz = poses[:, :3, 3]
    tree = cKDTree(xyz)
    pairs = []
    for q, near in enumerate(tree.query_ball_point(xyz, radius_m)):
        near = [m for m in near if stamps[q] - stamps[m] >= min_gap_s]
        if near:
            pairs.append((min(near, key=lambda m: np.linalg.norm(xyz[m] - xyz[q])), q))
    return np.array(pairs, dtype=int).reshape(-1, 2)


def loops_from_ground_truth(stamps: np.ndarray, poses: np.ndarray, *, radius_m: float = 3.0,
                            min_gap_s: float = 30.0, max_loops: int | None = None,
                            sigma_translation_m: float = 0.05, sigma_rotation_deg: float = 0.5,
                            seed: int = 0) -> list[LoopClosure]:
    """Right loops at revisits (module docstring); ``max_loops`` picks that many, spread evenly over time."""
    rng = np.random.default_rng(seed)
    pairs = revisit_pairs(stamps, poses, radius_m, min_gap_s)
    if max_loops is not None and len(pairs) > max_loops:
        pairs = pairs[np.round(np.linspace(0, len(pairs) - 1, max_loops)).astype(int)]
    cov = loop_covariance(sigma_translation_m, sigma_rotation_deg)
    return [LoopClosure(stamps[q], stamps[m], perturb(relative_transform(poses[m], poses[q]), cov, rng), cov,
                        {"source": "ground_truth"}) for m, q in pairs]


def wrong_loops(stamps: np.ndarray, poses: np.ndarray, n: int, *, min_distance_m: float = 30.0,
                min_gap_s: float = 30.0, sigma_translation_m: float = 0.05, sigma_rotation_deg: float = 0.5,
                seed: int = 1) -> list[LoopClosure]:
    """``n`` wrong loops between keyframes at least ``min_distance_m`` apart (module docstring)."""
    rng = np.random.default_rng(seed)
    xyz = poses[:, :3, 3]
    cov = loop_covariance(sigma_translation_m, sigma_rotation_deg)
    out: list[LoopClosure] = []
    for _ in range(1000 * max(n, 1)):
        if len(out) == n:
            break
        m, q = sorted(rng.choice(len(stamps), 2, replace=False))
        if stamps[q] - stamps[m] < min_gap_s or np.linalg.norm(xyz[q] - xyz[m]) < min_distance_m:
            continue
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler("z", rng.uniform(-10, 10), degrees=True).as_matrix()
        T[:2, 3] = rng.uniform(-2, 2, 2)
        out.append(LoopClosure(stamps[q], stamps[m], T, cov, {"source": "planted_wrong"}))
    if len(out) < n:
        raise ValueError(f"found only {len(out)} of {n} keyframe pairs {min_distance_m} m apart")
    return out
