"""Sparse depth in a keyframe's image from its LiDAR points, and 3D points for image keypoints.

``sparse_depth`` projects the LiDAR cloud into the camera (z-buffer: the nearest return wins per
pixel; 0 = no return). That (H, W) float32 image is what a map can store per keyframe (e.g. as a
16-bit PNG in millimetres).

``lookup_points`` gives a keypoint its 3D point: the valid depth pixels within ``radius`` px are
fitted with *inverse depth affine in (u, v)* — exact for any plane seen by a pinhole camera — and
the fit is evaluated at the keypoint's sub-pixel position, then back-projected. A keypoint is
dropped (NaN) when fewer than ``min_samples`` returns lie in its window, or when the fit's largest
relative depth residual exceeds ``max_residual`` (a depth discontinuity: keypoints on object edges
would otherwise get a background or foreground depth at random).
"""

from __future__ import annotations

import numpy as np

from ..data.calibration import CameraCalibration

_RIDGE = 1e-3  # regularises the (u, v) slope when the samples lie on one LiDAR row


def sparse_depth(cloud_lidar: np.ndarray, calib: CameraCalibration, min_depth: float = 0.5) -> np.ndarray:
    """(H, W) float32 z-depth (m) of the LiDAR returns seen by the camera; 0 where there is none."""
    depth = np.zeros((calib.height, calib.width), np.float32)
    if cloud_lidar is None or len(cloud_lidar) == 0:
        return depth
    pts = np.asarray(cloud_lidar, dtype=np.float64)[:, :3]
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    T = calib.T_camera_lidar
    pc = pts @ T[:3, :3].T + T[:3, 3]
    uv, inside = calib.project(pc, min_depth)
    if not inside.any():
        return depth
    u = np.rint(uv[inside, 0]).astype(np.int64)
    v = np.rint(uv[inside, 1]).astype(np.int64)
    z = pc[inside, 2].astype(np.float32)
    order = np.argsort(-z)  # far first, so the nearest return is written last and wins
    depth[v[order], u[order]] = z[order]
    return depth


def lookup_points(depth: np.ndarray, uv: np.ndarray, calib: CameraCalibration, radius: int = 4,
                  min_samples: int = 3, max_residual: float = 0.03) -> np.ndarray:
    """Camera-frame 3D points (N, 3) for raw pixel positions ``uv``; rows are NaN where depth is unknown."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    n = len(uv)
    out = np.full((n, 3), np.nan)
    if n == 0 or depth is None or depth.size == 0 or not np.any(depth > 0):
        return out
    h, w = depth.shape
    r = int(radius)
    offs = np.arange(-r, r + 1)
    du, dv = np.meshgrid(offs, offs)
    du, dv = du.ravel(), dv.ravel()
    cu, cv = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
    pu, pv = cu[:, None] + du[None], cv[:, None] + dv[None]  # (N, S) window pixels
    inside = (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
    z = np.where(inside, depth[np.clip(pv, 0, h - 1), np.clip(pu, 0, w - 1)], 0.0).astype(np.float64)
    valid = z > 0
    count = valid.sum(1)
    ok = count >= min_samples
    if not ok.any():
        return out
    z, valid = z[ok], valid[ok]
    x = (pu[ok] - uv[ok, 0:1]).astype(np.float64)  # offsets from the keypoint: the fit's intercept is its value
    y = (pv[ok] - uv[ok, 1:2]).astype(np.float64)
    inv = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    wgt = valid.astype(np.float64)
    # Weighted least squares of inv ~ a + b x + c y, batched as 3x3 normal equations per keypoint.
    A = np.stack([np.ones_like(x), x, y], -1) * wgt[..., None]  # (M, S, 3)
    AtA = np.einsum("msi,msj->mij", A, A) + np.diag([0.0, _RIDGE, _RIDGE]) * count[ok, None, None]
    Atb = np.einsum("msi,ms->mi", A, inv)
    coef = np.linalg.solve(AtA, Atb[..., None])[..., 0]
    fit = coef[:, 0:1] + coef[:, 1:2] * x + coef[:, 2:3] * y
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(fit * z - 1.0)  # |z / z_fit - 1| expressed through inverse depths
    rel = np.where(valid, rel, 0.0).max(1)
    good = (coef[:, 0] > 0) & (rel <= max_residual)
    idx = np.flatnonzero(ok)[good]
    out[idx] = calib.back_project(uv[idx], 1.0 / coef[good, 0])
    return out
