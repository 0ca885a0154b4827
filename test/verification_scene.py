"""A tiny analytic world for verification tests: textured planes (a street canyon) seen by a pinhole camera and a
spinning LiDAR, both ray-cast exactly in numpy, so poses and 3D points are known without the town renderer."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from distilvpr_ros.data.calibration import CameraCalibration


def make_calibration(width: int = 320, height: int = 240, hfov_deg: float = 90.0) -> CameraCalibration:
    """The synthetic world's camera layout: optical frame pitched 3 deg down, LiDAR on the roof."""
    f = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
    optical_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    T_bc = np.eye(4)
    T_bc[:3, :3] = Rotation.from_euler("y", 3, degrees=True).as_matrix() @ optical_to_base
    T_bc[:3, 3] = (1.5, 0.0, 1.6)
    T_bl = np.eye(4)
    T_bl[:3, 3] = (0.3, 0.0, 1.9)
    return CameraCalibration(K, width, height, T_bc, T_bl)


def pose(x: float, y: float, yaw_deg: float, z: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = (x, y, z)
    return T


def pose_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Translation (m) and rotation (deg) between two 4x4 poses."""
    return (float(np.linalg.norm(a[:3, 3] - b[:3, 3])),
            float(np.degrees(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude())))


def texture(rng: np.random.Generator, shape=(256, 512)) -> np.ndarray:
    """Multi-scale blob noise (grey, uint8): corners and blobs at several scales, like facades."""
    acc = np.zeros(shape, np.float32)
    for sigma, w in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.0)):
        n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
        acc += w * n / (n.std() + 1e-6)
    acc = (acc - acc.min()) / (acc.max() - acc.min())
    return (acc * 255).astype(np.uint8)


@dataclass
class Plane:
    origin: np.ndarray  # corner of the textured rectangle
    a: np.ndarray  # unit axis along texture columns
    b: np.ndarray  # unit axis along texture rows
    size: tuple[float, float]  # extent along a and b (m)
    tex: np.ndarray  # (rows, cols) uint8

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.a, self.b)


class PlaneScene:
    """A street canyon: facades at y = +-8 m, an end wall at x = 40 m and a textured ground."""

    def __init__(self, seed: int = 0, calib: CameraCalibration | None = None):
        rng = np.random.default_rng(seed)
        self.calib = calib or make_calibration()
        ex, ey, ez = np.eye(3)
        self.planes = [
            Plane(np.array([-20.0, 8.0, 0.0]), ex, ez, (70.0, 20.0), texture(rng, (256, 896))),
            Plane(np.array([-20.0, -8.0, 0.0]), ex, ez, (70.0, 20.0), texture(rng, (256, 896))),
            Plane(np.array([40.0, -8.0, 0.0]), ey, ez, (16.0, 20.0), texture(rng, (256, 205))),
            Plane(np.array([-20.0, -8.0, 0.0]), ex, ey, (60.0, 16.0), texture(rng, (205, 768))),
        ]

    def cast(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ray length (N,) (inf on a miss) and grey value (N,) of the nearest plane hit."""
        best_t = np.full(len(dirs), np.inf)
        grey = np.zeros(len(dirs), np.float32)
        for p in self.planes:
            n = p.normal
            dn = dirs @ n
            with np.errstate(divide="ignore", invalid="ignore"):
                t = ((p.origin - origin) @ n) / dn
                hit = origin + dirs * t[:, None]
            s = (hit - p.origin) @ p.a
            r = (hit - p.origin) @ p.b
            ok = np.isfinite(t) & (t > 1e-3) & (s >= 0) & (s < p.size[0]) & (r >= 0) & (r < p.size[1]) & (t < best_t)
            if not ok.any():
                continue
            rows, cols = p.tex.shape
            mx = (s[ok] / p.size[0] * cols - 0.5).astype(np.float32)
            my = (r[ok] / p.size[1] * rows - 0.5).astype(np.float32)
            side = int(np.ceil(np.sqrt(len(mx))))  # remap wants a 2D map smaller than 32767 per side
            pad = side * side - len(mx)
            vals = cv2.remap(p.tex, np.pad(mx, (0, pad)).reshape(side, side), np.pad(my, (0, pad)).reshape(side, side),
                             cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).ravel()[:len(mx)]
            best_t[ok] = t[ok]
            grey[ok] = vals.ravel()
        return best_t, grey

    def render(self, world_T_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB image (H, W, 3) uint8 and z-depth (H, W) of the camera at a base pose."""
        c = self.calib
        T = world_T_base @ c.T_base_camera
        u, v = np.meshgrid(np.arange(c.width), np.arange(c.height))
        d = np.stack([(u - c.K[0, 2]) / c.K[0, 0], (v - c.K[1, 2]) / c.K[1, 1], np.ones_like(u, float)], -1)
        d = d.reshape(-1, 3)
        dn = d / np.linalg.norm(d, axis=1, keepdims=True)
        t, grey = self.cast(T[:3, 3], dn @ T[:3, :3].T)
        img = np.where(np.isfinite(t), grey, 200.0).reshape(c.height, c.width)
        depth = (t * dn[:, 2]).reshape(c.height, c.width)
        rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return rgb, depth

    def lidar(self, world_T_base: np.ndarray, beams: int = 32, columns: int = 1024,
              vfov=(-25.0, 15.0), max_range: float = 100.0) -> np.ndarray:
        """(N, 4) float32 LiDAR returns x, y, z, intensity in the LiDAR frame."""
        T = world_T_base @ self.calib.T_base_lidar
        e, a = np.meshgrid(np.deg2rad(np.linspace(*vfov, beams)), np.linspace(-np.pi, np.pi, columns, endpoint=False),
                           indexing="ij")
        dl = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
        t, grey = self.cast(T[:3, 3], dl @ T[:3, :3].T)
        ok = np.isfinite(t) & (t < max_range) & (t > 0.8)
        return np.column_stack([dl[ok] * t[ok, None], grey[ok] / 255.0]).astype(np.float32)
