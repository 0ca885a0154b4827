"""Rigid-transform helpers. Quaternions are x, y, z, w (ROS order) everywhere in the package."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def make_pose(xyz, quat_xyzw) -> np.ndarray:
    """4x4 transform from a translation and an (x, y, z, w) quaternion."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(quat_xyzw, dtype=float)).as_matrix()
    T[:3, 3] = np.asarray(xyz, dtype=float)
    return T


def pose_from_xyz_yaw(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    return make_pose((x, y, z), Rotation.from_euler("z", yaw).as_quat())


def pose_to_xyz_quat(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (3,) and (x, y, z, w) quaternion (4,) of a 4x4 transform."""
    return np.asarray(T[:3, 3], dtype=float), Rotation.from_matrix(T[:3, :3]).as_quat()


def yaw_of(T: np.ndarray) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def invert(T: np.ndarray) -> np.ndarray:
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def transform_points(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    return pts @ T[:3, :3].T + T[:3, 3]


def interpolate_poses(t_query: np.ndarray, t_src: np.ndarray, poses_src: np.ndarray) -> np.ndarray:
    """Poses at ``t_query``: linear in translation, slerp in rotation; clamped at the ends.

    ``t_src`` must be sorted and strictly increasing.
    """
    from scipy.spatial.transform import Slerp

    t_query = np.asarray(t_query, dtype=float)
    t_src = np.asarray(t_src, dtype=float)
    if len(t_src) == 0:
        raise ValueError("no source poses to interpolate from")
    if len(t_src) == 1:
        return np.repeat(poses_src[:1], len(t_query), axis=0)
    tq = np.clip(t_query, t_src[0], t_src[-1])
    out = np.repeat(np.eye(4)[None], len(tq), axis=0)
    for k in range(3):
        out[:, k, 3] = np.interp(tq, t_src, poses_src[:, k, 3])
    slerp = Slerp(t_src, Rotation.from_matrix(poses_src[:, :3, :3]))
    out[:, :3, :3] = slerp(tq).as_matrix()
    return out
