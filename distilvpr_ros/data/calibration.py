"""Camera calibration for verification: pinhole intrinsics plus the camera and LiDAR extrinsics.

Frames follow :mod:`distilvpr_ros.data.world.render`: ``T_base_camera`` maps the camera's optical
frame (z forward, x right, y down) into the base frame, ``T_base_lidar`` the LiDAR frame into the
base frame. Distortion uses OpenCV's model (``k1, k2, p1, p2[, k3...]``); all zeros is a pure pinhole.

The map stores one of these per keyframe (``to_dict``/``from_dict`` give plain JSON); the
synthetic world writes the same facts into ``world.json["calibration"]`` (:meth:`from_world_meta`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .geometry import invert


def _matrix(value, shape: tuple[int, ...], name: str) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape or not np.all(np.isfinite(m)):
        raise ValueError(f"calibration {name} must be a finite {shape} matrix, got shape {m.shape}")
    return m


@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics ``K`` (3x3), image size, distortion and the base<-camera / base<-LiDAR extrinsics."""

    K: np.ndarray
    width: int
    height: int
    T_base_camera: np.ndarray
    T_base_lidar: np.ndarray = field(default_factory=lambda: np.eye(4))
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self):
        object.__setattr__(self, "K", _matrix(self.K, (3, 3), "K"))
        object.__setattr__(self, "T_base_camera", _matrix(self.T_base_camera, (4, 4), "T_base_camera"))
        object.__setattr__(self, "T_base_lidar", _matrix(self.T_base_lidar, (4, 4), "T_base_lidar"))
        dist = np.asarray(self.dist, dtype=np.float64).ravel()
        object.__setattr__(self, "dist", dist)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"calibration image size must be positive, got {self.width}x{self.height}")
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise ValueError("calibration K must have positive focal lengths")

    # -- derived transforms ---------------------------------------------------------------------

    @property
    def T_camera_lidar(self) -> np.ndarray:
        """LiDAR frame -> camera optical frame."""
        return invert(self.T_base_camera) @ self.T_base_lidar

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    # -- projection -----------------------------------------------------------------------------

    def project(self, points_camera: np.ndarray, min_depth: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) of camera-frame points and a mask of those in front and inside the image."""
        pts = np.asarray(points_camera, dtype=np.float64).reshape(-1, 3)
        z = pts[:, 2]
        front = z > min_depth
        uv = np.full((len(pts), 2), np.nan)
        if front.any():
            if self.has_distortion:
                proj, _ = cv2.projectPoints(pts[front], np.zeros(3), np.zeros(3), self.K, self.dist)
                uv[front] = proj.reshape(-1, 2)
            else:
                p = pts[front]
                uv[front, 0] = self.K[0, 0] * p[:, 0] / p[:, 2] + self.K[0, 2]
                uv[front, 1] = self.K[1, 1] * p[:, 1] / p[:, 2] + self.K[1, 2]
        inside = front & (uv[:, 0] >= -0.5) & (uv[:, 0] < self.width - 0.5) & (uv[:, 1] >= -0.5) \
            & (uv[:, 1] < self.height - 0.5)
        return uv, inside

    def undistort(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates of an ideal pinhole camera with the same ``K`` (identity without distortion)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if not self.has_distortion or len(uv) == 0:
            return uv.copy()
        return cv2.undistortPoints(uv.reshape(-1, 1, 2), self.K, self.dist, P=self.K).reshape(-1, 2)

    def back_project(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Camera-frame points (N, 3) at z-depth ``depth`` behind raw (distorted) pixels ``uv``."""
        u = self.undistort(uv)
        d = np.asarray(depth, dtype=np.float64).reshape(-1)
        x = (u[:, 0] - self.K[0, 2]) / self.K[0, 0]
        y = (u[:, 1] - self.K[1, 2]) / self.K[1, 1]
        return np.column_stack([x * d, y * d, d])

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"K": self.K.tolist(), "width": int(self.width), "height": int(self.height),
                "T_base_camera": self.T_base_camera.tolist(), "T_base_lidar": self.T_base_lidar.tolist(),
                "dist": self.dist.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "CameraCalibration":
        """From :meth:`to_dict` or from ``world.json["calibration"]`` (extra keys are ignored)."""
        try:
            return cls(K=d["K"], width=int(d["width"]), height=int(d["height"]), T_base_camera=d["T_base_camera"],
                       T_base_lidar=d.get("T_base_lidar", np.eye(4)), dist=d.get("dist", np.zeros(5)))
        except KeyError as e:
            raise ValueError(f"calibration lacks {e.args[0]!r}") from None

    @classmethod
    def from_world_meta(cls, meta: dict) -> "CameraCalibration":
        """The calibration a synthetic world records (``read_world_meta(folder)``)."""
        if "calibration" not in meta:
            raise ValueError("world description has no calibration")
        return cls.from_dict(meta["calibration"])
