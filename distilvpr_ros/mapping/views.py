"""Keyframe views: what geometric verification needs of each map keyframe, kept compactly.

Per keyframe a view is the camera image as JPEG bytes and the LiDAR points as float16 ``x, y, z`` in the
LiDAR frame (already voxel-downsampled by whoever adds them); a keyframe may have no view (empty bytes,
zero points: maps of format 1, or a keyframe added without one). The calibration
(:class:`~distilvpr_ros.data.calibration.CameraCalibration` as a plain dict) is stored once per
run, since one run is one sensor rig.

In memory the views are lists of per-keyframe bytes / arrays; on disk (:mod:`.map_io`) they are one
concatenated ``views_images.bin`` plus int64 offsets, and one ``(P, 3)`` float16 ``views_points.npy``
plus int64 offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

POINT_DTYPE = np.float16  # 1 cm at 16 m, 6 cm at 100 m: below the LiDAR's own noise at range
MAX_POINT_COORD = 6.0e4  # float16 tops out at 65504


@dataclass
class ViewData:
    """One keyframe's stored view: JPEG bytes (b"" = no image) and (P, 3) float16 LiDAR-frame points."""

    image_jpeg: bytes = b""
    points: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return not self.image_jpeg and (self.points is None or len(self.points) == 0)


def encode_jpeg(rgb: np.ndarray | None, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB (H, W, 3) or grey (H, W) uint8 image; b"" for None or an empty image."""
    if rgb is None:
        return b""
    img = np.asarray(rgb)
    if img.size == 0:
        return b""
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"view image must be H x W (x 3) uint8, got {img.dtype} {img.shape}")
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """RGB (H, W, 3) uint8 from JPEG bytes; None when empty or undecodable."""
    if not data:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pack_points(points: np.ndarray | None) -> np.ndarray:
    """(P, 3) float16 from an (N, >=3) cloud: non-finite and out-of-range (> 60 km) points dropped."""
    if points is None:
        return np.zeros((0, 3), POINT_DTYPE)
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"view points must be N x C with C >= 3, got shape {pts.shape}")
    pts = pts[:, :3].astype(np.float64)
    keep = np.all(np.isfinite(pts), axis=1) & np.all(np.abs(pts) < MAX_POINT_COORD, axis=1)
    return np.ascontiguousarray(pts[keep], dtype=POINT_DTYPE)


class ViewStore:
    """Views of the keyframes of one map (row i = keyframe i) and the calibration of each run."""

    def __init__(self) -> None:
        self._images: list[bytes] = []
        self._points: list[np.ndarray] = []
        self.calibrations: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self._images)

    def append(self, view: ViewData | None) -> None:
        view = view or ViewData()
        self._images.append(bytes(view.image_jpeg))
        self._points.append(pack_points(view.points))

    def set_calibration(self, run: str, calibration: dict) -> None:
        """Record ``run``'s calibration; a run keeps one rig: a different one is refused (ValueError)."""
        old = self.calibrations.get(run)
        if old is not None and not _same_calibration(old, calibration):
            raise ValueError(f"run {run!r} already has another calibration in this map; start a new run")
        self.calibrations[run] = calibration

    def get(self, i: int) -> ViewData:
        return ViewData(self._images[i], self._points[i])

    @property
    def any(self) -> bool:
        """Whether at least one keyframe has a view."""
        return any(self._images) or any(len(p) for p in self._points)

    # ---- the on-disk layout (map_io)
    def packed(self) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
        """``(image bytes, image offsets (N+1,), points (P, 3) float16, point offsets (N+1,))``."""
        img_off = np.zeros(len(self) + 1, np.int64)
        img_off[1:] = np.cumsum([len(b) for b in self._images])
        pts_off = np.zeros(len(self) + 1, np.int64)
        pts_off[1:] = np.cumsum([len(p) for p in self._points])
        points = np.concatenate(self._points) if self._points else np.zeros((0, 3), POINT_DTYPE)
        return b"".join(self._images), img_off, np.ascontiguousarray(points, POINT_DTYPE), pts_off

    @classmethod
    def unpacked(cls, images: bytes, image_offsets: np.ndarray, points: np.ndarray, point_offsets: np.ndarray,
                 calibrations: dict[str, dict]) -> "ViewStore":
        """The inverse of :meth:`packed` (offsets already checked by the reader)."""
        store = cls()
        mv = memoryview(images)
        store._images = [bytes(mv[a:b]) for a, b in zip(image_offsets[:-1], image_offsets[1:])]
        store._points = [points[a:b] for a, b in zip(point_offsets[:-1], point_offsets[1:])]
        store.calibrations = dict(calibrations)
        return store

    @classmethod
    def empty(cls, count: int) -> "ViewStore":
        """``count`` keyframes without views (a map of format 1)."""
        store = cls()
        store._images = [b""] * count
        store._points = [np.zeros((0, 3), POINT_DTYPE)] * count
        return store


def _same_calibration(a: dict, b: dict) -> bool:
    keys = ("K", "width", "height", "T_base_camera", "T_base_lidar", "dist")
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if (va is None) != (vb is None):
            return False
        if va is None:
            continue
        xa, xb = np.asarray(va, float), np.asarray(vb, float)
        if xa.shape != xb.shape or not np.allclose(xa, xb, atol=1e-9):
            return False
    return True
