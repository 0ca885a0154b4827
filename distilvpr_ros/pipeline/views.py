"""Keyframe views between the pipeline and the map: what a keyframe stores for verification
(:func:`make_view`), and the verification-ready views of stored keyframes, cached per keyframe id
(:class:`ViewCache`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np

from ..mapping.database import PlaceDatabase
from ..mapping.views import ViewData, decode_jpeg, encode_jpeg
from ..data.calibration import CameraCalibration
from ..verification.camera import KeyframeView
from ..verification.lidar import voxel_downsample
from .config import ViewsConfig

NO_VIEWS = "map has no keyframe views"


def make_view(image: np.ndarray | None, cloud: np.ndarray | None, cfg: ViewsConfig | None = None) -> ViewData:
    """A keyframe's view as stored: JPEG image, LiDAR points (LiDAR frame) downsampled to ``cfg.voxel_m``."""
    cfg = cfg or ViewsConfig()
    points = None
    if cloud is not None:
        pts = np.asarray(cloud)
        if pts.ndim == 2 and pts.shape[1] >= 3:
            pts = pts[:, :3].astype(np.float64)
            pts = pts[np.all(np.isfinite(pts), axis=1)]
            points = voxel_downsample(pts, cfg.voxel_m) if cfg.voxel_m > 0 and len(pts) else pts
    return ViewData(encode_jpeg(image, cfg.jpeg_quality), points)


class ViewCache:
    """Verification inputs of the keyframes of one map, built on first use and kept for the last ``size`` ids.

    :meth:`camera` gives a :class:`~distilvpr_ros.verification.camera.KeyframeView` (decoded image, sparse
    depth from the stored points, pose, calibration; the camera verifier caches its features on it), or the
    reason there is none; with ``prepare`` (a camera verifier's), each view is prepared when built and its decoded
    image and depth are dropped (the prepared features and their 3D points stay: ~25 kB per ORB keyframe instead of
    ~0.5 MB), so a whole map can stay cached. :meth:`points` gives the stored LiDAR points as float64. ``fallback``:
    the calibration of runs that recorded none (a map built by a node that was given no calibration; same rig
    assumed).
    """

    def __init__(self, db: PlaceDatabase, size: int = 512, fallback: CameraCalibration | None = None,
                 prepare: Callable[[KeyframeView], str] | None = None) -> None:
        self.db, self.size, self.fallback, self.prepare = db, int(size), fallback, prepare
        self._camera: OrderedDict[int, KeyframeView | str] = OrderedDict()
        self._calib: dict[str, CameraCalibration | None] = {}

    def __len__(self) -> int:
        """Keyframe views built and cached now."""
        return len(self._camera)

    def calibration(self, run: str) -> CameraCalibration | None:
        if run not in self._calib:
            d = self.db.calibration(run)
            self._calib[run] = self.fallback if d is None else CameraCalibration.from_dict(d)
        return self._calib[run]

    def points(self, id: int) -> np.ndarray | None:
        pts = self.db.view(int(id)).points
        return None if pts is None or len(pts) == 0 else pts.astype(np.float64)

    def camera(self, id: int) -> KeyframeView | str:
        id = int(id)
        if id in self._camera:
            self._camera.move_to_end(id)
            return self._camera[id]
        view = self._build(id)
        if self.prepare is not None and isinstance(view, KeyframeView):
            self.prepare(view)
            view.image = view.depth = None  # what verification needs is on the view now: keep the cache small
        self._camera[id] = view
        while len(self._camera) > self.size:
            self._camera.popitem(last=False)
        return view

    def _build(self, id: int) -> KeyframeView | str:
        if not self.db.has_views:
            return NO_VIEWS
        stored, meta = self.db.view(id), self.db.meta(id)
        if stored.empty:
            return f"keyframe {id} has no view"
        calib = self.calibration(meta.run)
        if calib is None:
            return f"run {meta.run!r} of keyframe {id} has no camera calibration"
        image = decode_jpeg(stored.image_jpeg)
        if image is None:
            return f"keyframe {id} has no (decodable) image"
        cloud = None if stored.points is None or len(stored.points) == 0 else stored.points.astype(np.float64)
        return KeyframeView.from_cloud(meta.pose_matrix, calib, image, cloud)
