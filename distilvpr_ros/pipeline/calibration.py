"""Where the pipeline's camera calibration comes from (:func:`resolve_calibration`).

In order of preference:

1. a synthetic world's ``world.json`` calibration (intrinsics and both extrinsics, exact), found beside a run or
   a bag of the world (``<world>/runs/<run>``, ``<world>/bags/<run>``);
2. ``CameraInfo`` (a bag's, or the node's camera_info topic) for the intrinsics and distortion, with the
   extrinsics from :class:`~.config.CalibrationConfig`;
3. :class:`~.config.CalibrationConfig` alone, when its intrinsics are set (``fx``, ``fy``, ``width``, ``height``).

None when there is no source of intrinsics: the map then stores views without a calibration, LiDAR
verification still runs (in the LiDAR frame, with ``T_base_lidar`` from the config) and camera verification
rejects with a reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from ..data.calibration import CameraCalibration
from .config import CalibrationConfig


def _transform(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("ZYX", [yaw, pitch, roll], degrees=True).as_matrix()
    T[:3, 3] = (x, y, z)
    return T


def extrinsics_from_config(cfg: CalibrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(T_base_camera, T_base_lidar)`` from the config's xyz + roll/pitch/yaw."""
    return (_transform(cfg.camera_x, cfg.camera_y, cfg.camera_z, cfg.camera_roll_deg, cfg.camera_pitch_deg,
                       cfg.camera_yaw_deg),
            _transform(cfg.lidar_x, cfg.lidar_y, cfg.lidar_z, cfg.lidar_roll_deg, cfg.lidar_pitch_deg,
                       cfg.lidar_yaw_deg))


def calibration_from_config(cfg: CalibrationConfig, camera_info: Any = None) -> CameraCalibration | None:
    """Intrinsics from ``camera_info`` (anything with ``K``, ``width``, ``height`` and optionally ``D``, e.g.
    :class:`~distilvpr_ros.data.msg_codec.CameraIntrinsics`) else from the config; extrinsics from the config."""
    T_bc, T_bl = extrinsics_from_config(cfg)
    if camera_info is not None and np.asarray(camera_info.K, float).reshape(-1)[0] > 0:
        D = getattr(camera_info, "D", None)
        dist = np.zeros(5) if D is None or len(D) == 0 else np.asarray(D, float)
        return CameraCalibration(np.asarray(camera_info.K, float).reshape(3, 3), int(camera_info.width),
                                 int(camera_info.height), T_bc, T_bl, dist)
    if cfg.fx > 0 and cfg.fy > 0 and cfg.width > 0 and cfg.height > 0:
        K = np.array([[cfg.fx, 0, cfg.cx], [0, cfg.fy, cfg.cy], [0, 0, 1]], float)
        return CameraCalibration(K, cfg.width, cfg.height, T_bc, T_bl)
    return None


def calibration_overrides(calib: CameraCalibration) -> dict[str, float | int]:
    """The ``calibration.*`` keys (dotted) that give ``calib`` back through :func:`calibration_from_config`
    (distortion aside): how a replay hands a synthetic world's calibration to a node."""
    out: dict[str, float | int] = {}
    for name, T in (("camera", calib.T_base_camera), ("lidar", calib.T_base_lidar)):
        yaw, pitch, roll = Rotation.from_matrix(T[:3, :3]).as_euler("ZYX", degrees=True)
        out.update({f"calibration.{name}_x": float(T[0, 3]), f"calibration.{name}_y": float(T[1, 3]),
                    f"calibration.{name}_z": float(T[2, 3]), f"calibration.{name}_roll_deg": float(roll),
                    f"calibration.{name}_pitch_deg": float(pitch), f"calibration.{name}_yaw_deg": float(yaw)})
    K = calib.K
    out.update({"calibration.fx": float(K[0, 0]), "calibration.fy": float(K[1, 1]), "calibration.cx": float(K[0, 2]),
                "calibration.cy": float(K[1, 2]), "calibration.width": int(calib.width),
                "calibration.height": int(calib.height)})
    return out


def world_calibration(path: str | Path | None) -> CameraCalibration | None:
    """The calibration of the synthetic world that ``path`` (a world, or a run / bag folder in one) belongs to."""
    if path is None:
        return None
    from ..data.synthetic import read_world_meta

    p = Path(path)
    for folder in (p, p.parent, p.parent.parent):
        if (folder / "world.json").is_file():
            try:
                return CameraCalibration.from_world_meta(read_world_meta(folder))
            except Exception:  # a world.json without (or with a broken) calibration: try the other sources
                return None
    return None


def resolve_calibration(cfg: CalibrationConfig, source: Any = None) -> CameraCalibration | None:
    """The calibration for a data source: a ``SyntheticRun`` / ``BagSequence`` (or a path); see the module doc."""
    path = getattr(source, "run_dir", None) or getattr(source, "path", None) or source
    if isinstance(path, (str, Path)):
        found = world_calibration(path)
        if found is not None:
            return found
    return calibration_from_config(cfg, getattr(source, "camera_info", None))
