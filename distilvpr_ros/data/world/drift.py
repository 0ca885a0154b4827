"""Drifting odometry from a ground-truth trajectory: scale error and yaw bias as seeded random walks.

The model (parameters in :class:`~.config.OdometryDriftConfig`) integrates the ground truth's
relative motions with errors, the way wheel odometry plus a gyro drifts. For step ``k`` (from pose
``k-1`` to pose ``k``: relative motion ``R_k, t_k`` with ``d_k = |t_k|`` metres over ``dt_k`` seconds)::

    s_k = s_{k-1} + scale_walk_per_sqrt_m * sqrt(d_k) * n        s_0 = scale_error
    b_k = b_{k-1} + yaw_bias_walk_deg_s_per_sqrt_s * sqrt(dt_k) * n   b_0 = yaw_bias_deg_s
    t'_k = (1 + s_k) * t_k + translation_noise_m_per_sqrt_m * sqrt(d_k) * (n, n, 0)
    R'_k = R_k * Rz(b_k * dt_k + yaw_noise_deg_per_sqrt_m * sqrt(d_k) * n)
    odom_0 = world_T_base_0,  odom_k = odom_{k-1} * [R'_k | t'_k]

with independent standard normal draws ``n`` from ``np.random.default_rng(seed)`` (drawn in a fixed
order, so the same seed gives the same trajectory). The drifting odometry starts at the first
ground-truth pose; its error grows with the distance and time travelled, as real odometry's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from ..geometry import invert
from .config import OdometryDriftConfig


@dataclass
class DriftedOdometry:
    """Drifting odometry poses and the per-pose state of the drift (index 0: the initial values)."""

    poses: np.ndarray  # (N, 4, 4) odom_T_base, odom_0 = world_T_base_0
    scale_error: np.ndarray  # (N,) s_k
    yaw_bias: np.ndarray  # (N,) b_k in rad/s


def simulate_drift(poses: np.ndarray, stamps: np.ndarray, model: OdometryDriftConfig,
                   seed: int | Sequence[int]) -> DriftedOdometry:
    """Drifting odometry of a trajectory (module docstring); ``poses`` (N, 4, 4), ``stamps`` (N,) seconds."""
    poses = np.asarray(poses, dtype=float)
    stamps = np.asarray(stamps, dtype=float)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(stamps) != len(poses):
        raise ValueError(f"need (N, 4, 4) poses and (N,) stamps, got {poses.shape} and {stamps.shape}")
    if not (np.isfinite(poses).all() and np.isfinite(stamps).all()):
        raise ValueError("poses and stamps must be finite")
    if len(stamps) > 1 and np.any(np.diff(stamps) <= 0):
        raise ValueError("stamps must be strictly increasing")
    n = len(poses)
    s0, b0 = model.scale_error, np.deg2rad(model.yaw_bias_deg_s)
    if n < 2:
        return DriftedOdometry(poses.copy(), np.full(n, s0), np.full(n, b0))
    rng = np.random.default_rng(seed)
    noise_scale, noise_bias, noise_x, noise_y, noise_yaw = rng.standard_normal((5, n - 1))

    rel = np.einsum("kij,kjl->kil", np.stack([invert(T) for T in poses[:-1]]), poses[1:])
    d = np.linalg.norm(rel[:, :3, 3], axis=1)
    dt = np.diff(stamps)
    scale = s0 + np.cumsum(model.scale_walk_per_sqrt_m * np.sqrt(d) * noise_scale)
    bias = b0 + np.cumsum(np.deg2rad(model.yaw_bias_walk_deg_s_per_sqrt_s) * np.sqrt(dt) * noise_bias)
    extra_yaw = bias * dt + np.deg2rad(model.yaw_noise_deg_per_sqrt_m) * np.sqrt(d) * noise_yaw

    step = rel.copy()
    step[:, :3, 3] *= (1.0 + scale)[:, None]
    step[:, 0, 3] += model.translation_noise_m_per_sqrt_m * np.sqrt(d) * noise_x
    step[:, 1, 3] += model.translation_noise_m_per_sqrt_m * np.sqrt(d) * noise_y
    step[:, :3, :3] = rel[:, :3, :3] @ Rotation.from_euler("z", extra_yaw[:, None]).as_matrix()

    out = np.empty_like(poses)
    out[0] = poses[0]
    for k in range(1, n):
        out[k] = out[k - 1] @ step[k - 1]
    return DriftedOdometry(out, np.concatenate([[s0], scale]), np.concatenate([[b0], bias]))


def drift_trajectory(poses: np.ndarray, stamps: np.ndarray, model: OdometryDriftConfig | None = None,
                     seed: int | Sequence[int] = 0) -> np.ndarray:
    """Drifting odometry poses (N, 4, 4) of any trajectory; ``model`` defaults to :class:`OdometryDriftConfig`."""
    return simulate_drift(poses, stamps, model or OdometryDriftConfig(), seed).poses
