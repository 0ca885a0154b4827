"""Absolute pose from 2D-3D correspondences: PnP + RANSAC (poselib or OpenCV) and its covariance.

Both backends return the same :class:`PnPSolution`: the pose ``T_camera_points`` (maps the 3D points'
frame into the camera's optical frame), the inlier mask at the RANSAC threshold after non-linear
refinement, and the inliers' RMS reprojection error. Pixels must be undistorted (pinhole ``K``).

poselib (LO-RANSAC with P3P and bundle refinement) is used when it imports; OpenCV's
``solvePnPRansac`` (AP3P minimal solver, then Levenberg-Marquardt on the inliers) otherwise or on request.

:func:`pose_covariance` gives the 6x6 covariance of a base pose from the inliers' reprojection
residuals: ``sigma^2 (J^T J)^-1`` with ``J`` the Jacobian of the stacked residuals with respect to a
perturbation ``[dx, dy, dz, droll, dpitch, dyaw]`` of the base pose *in the map frame* (position
shifted by ``d_xyz``; orientation rotated about the map's axes, ``R' = Exp(d_rpy) R``), the order and
frame of ``geometry_msgs/PoseWithCovariance``. ``sigma^2`` is the residuals' variance estimate
``RSS / (2n - 6)``, floored at ``min_sigma_px^2``. It states the precision given correct inliers,
not the chance that the match itself is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

try:  # optional: faster and more accurate RANSAC; OpenCV is the fallback
    import poselib
except ImportError:  # pragma: no cover - depends on the environment
    poselib = None

PnPBackend = Literal["poselib", "opencv"]
PNP_BACKENDS: tuple[str, ...] = ("poselib", "opencv")


def default_backend() -> str:
    return "poselib" if poselib is not None else "opencv"


@dataclass
class PnPSolution:
    T_camera_points: np.ndarray  # 4x4: points' frame -> camera optical frame
    inliers: np.ndarray  # (N,) bool
    rms_px: float  # RMS reprojection error of the inliers (px)

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def reprojection_errors(T_camera_points: np.ndarray, K: np.ndarray, uv: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Pixel distance (N,) between ``uv`` and the projections of ``pts``; inf behind the camera."""
    pc = pts @ T_camera_points[:3, :3].T + T_camera_points[:3, 3]
    z = pc[:, 2]
    err = np.full(len(pts), np.inf)
    front = z > 1e-6
    proj = pc[front, :2] / z[front, None] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    err[front] = np.linalg.norm(proj - uv[front], axis=1)
    return err


def _poselib(uv, pts, K, width, height, threshold_px, max_iterations, seed) -> np.ndarray | None:
    camera = {"model": "PINHOLE", "width": int(width), "height": int(height),
              "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}
    ransac = {"max_reproj_error": float(threshold_px), "max_iterations": int(max_iterations),
              "min_iterations": min(100, int(max_iterations)), "seed": int(seed)}
    pose, info = poselib.estimate_absolute_pose(uv, pts, camera, ransac, {})
    if info.get("num_inliers", 0) == 0:
        return None
    T = np.eye(4)
    T[:3, :3] = pose.R
    T[:3, 3] = pose.t
    return T


def _opencv(uv, pts, K, threshold_px, max_iterations, seed) -> np.ndarray | None:
    cv2.setRNGSeed(int(seed))
    ok, rvec, tvec, inl = cv2.solvePnPRansac(pts, uv, K, None, iterationsCount=int(max_iterations),
                                             reprojectionError=float(threshold_px), confidence=0.9999,
                                             flags=cv2.SOLVEPNP_AP3P)
    if not ok or inl is None or len(inl) < 4:
        return None
    idx = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(pts[idx], uv[idx], K, None, rvec, tvec)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T


def solve_pnp(uv: np.ndarray, pts: np.ndarray, K: np.ndarray, width: int, height: int,
              threshold_px: float = 4.0, backend: str | None = None, max_iterations: int = 1000,
              seed: int = 0) -> tuple[PnPSolution | None, str]:
    """PnP + RANSAC. Returns ``(solution, "")`` or ``(None, reason)``; never raises on bad data."""
    backend = backend or default_backend()
    if backend not in PNP_BACKENDS:
        raise ValueError(f"unknown PnP backend {backend!r}; choose one of {PNP_BACKENDS}")
    if backend == "poselib" and poselib is None:
        raise ValueError("PnP backend 'poselib' requested but poselib is not installed (pip install poselib)")
    uv = np.ascontiguousarray(uv, dtype=np.float64).reshape(-1, 2)
    pts = np.ascontiguousarray(pts, dtype=np.float64).reshape(-1, 3)
    if len(uv) < 4:
        return None, f"too few 2D-3D correspondences for PnP ({len(uv)} < 4)"
    if np.linalg.matrix_rank(pts - pts.mean(0), tol=1e-6) < 2:
        return None, "degenerate 3D points (collinear or coincident)"
    try:
        if backend == "poselib":
            T = _poselib(uv, pts, K, width, height, threshold_px, max_iterations, seed)
        else:
            T = _opencv(uv, pts, K, threshold_px, max_iterations, seed)
    except cv2.error as e:
        return None, f"PnP failed: {e.err or e}"
    if T is None or not np.all(np.isfinite(T)):
        return None, "PnP RANSAC found no pose"
    err = reprojection_errors(T, K, uv, pts)
    inliers = err <= threshold_px
    if inliers.sum() < 4:
        return None, f"PnP pose has {int(inliers.sum())} inliers"
    rms = float(np.sqrt(np.mean(err[inliers] ** 2)))
    return PnPSolution(T, inliers, rms), ""


def _perturb(T: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = T.copy()
    out[:3, :3] = Rotation.from_rotvec(d[3:]).as_matrix() @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + d[:3]
    return out


def pose_covariance(world_T_base: np.ndarray, T_base_camera: np.ndarray, K: np.ndarray, uv: np.ndarray,
                    pts_world: np.ndarray, min_sigma_px: float = 0.5, step: float = 1e-6) -> np.ndarray | None:
    """6x6 covariance of ``world_T_base`` (map-frame x, y, z, roll, pitch, yaw) from inlier residuals.

    ``uv`` (undistorted pixels) and ``pts_world`` are the inlier correspondences. None when the
    Jacobian is rank deficient (the pose is not determined by these points).
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(pts_world, dtype=np.float64).reshape(-1, 3)
    n = len(uv)
    if n < 4:
        return None

    def residuals(T_wb):
        T_cw = np.linalg.inv(T_wb @ T_base_camera)
        pc = pts @ T_cw[:3, :3].T + T_cw[:3, 3]
        proj = pc[:, :2] / pc[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
        return (proj - uv).ravel()

    r0 = residuals(world_T_base)
    J = np.empty((2 * n, 6))
    for k in range(6):
        d = np.zeros(6)
        d[k] = step
        J[:, k] = (residuals(_perturb(world_T_base, d)) - residuals(_perturb(world_T_base, -d))) / (2 * step)
    JtJ = J.T @ J
    if not np.all(np.isfinite(JtJ)) or np.linalg.cond(JtJ) > 1e12:
        return None
    dof = max(2 * n - 6, 1)
    sigma2 = max(float(r0 @ r0) / dof, min_sigma_px ** 2)
    cov = sigma2 * np.linalg.inv(JtJ)
    return 0.5 * (cov + cov.T)
