"""Boreas (University of Toronto) sequences, layout as published and read by ``pyboreas``.

On disk (``<ts>`` is the UNIX time in microseconds, also the ``GPSTime`` column of the pose CSVs)::

    <root>/<seq>/camera/<ts>.png          RGB camera images
    <root>/<seq>/lidar/<ts>.bin           float32 N x 6: x, y, z, intensity, laser_number, time
                                          (time in seconds relative to <ts>)
    <root>/<seq>/applanix/camera_poses.csv, lidar_poses.csv
        GPSTime,easting,northing,altitude,vel_east,vel_north,vel_up,roll,pitch,heading,
        angvel_z,angvel_y,angvel_x        (one row per sensor frame; metres UTM, radians)
    <root>/<seq>/calib/P_camera.txt       4x4, K in the top-left 3x3
    <root>/<seq>/calib/T_camera_lidar.txt 4x4, LiDAR points into the camera frame
    <root>/<seq>/calib/T_applanix_lidar.txt

A pose row gives ``T_enu_sensor`` with the rotation ``C = roll(r) pitch(p) yaw(h)`` built from
``pyboreas``'s elementary matrices (the transposes of the usual active rotations), i.e. the transpose
of ``Rz(h) Ry(p) Rx(r)``; the translation is (easting, northing, altitude).

One sample per camera frame (as for bags), with the LiDAR scan nearest in time within
``pair_tolerance`` (Boreas triggers the camera as the LiDAR sweeps forward, so pairs are a few
milliseconds apart). The body frame of a sample is the LiDAR frame:
``world_T_base = T_enu_camera @ T_camera_lidar``, so clouds are expressed in the sample's base frame.
The Boreas cloud columns already follow the package convention (ring = laser number).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import DataError
from .sensor_files import read_bin_cloud, read_csv_columns, read_image_file
from ..msg_codec import CameraIntrinsics, nearest_stamps
from ..sample import Sample

POSE_COLUMNS = ("GPSTime", "easting", "northing", "altitude", "roll", "pitch", "heading")


def _load_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        M = np.loadtxt(path, ndmin=2)
    except OSError:
        raise DataError(path, "calibration file not found") from None
    except ValueError as err:
        raise DataError(path, f"malformed calibration matrix: {err}") from None
    if M.shape != shape:
        raise DataError(path, f"expected a {shape[0]}x{shape[1]} matrix, found {M.shape}")
    return M


def read_pose_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Microsecond stamps ``(N,)`` and ``T_enu_sensor`` poses ``(N, 4, 4)`` from a Boreas pose CSV."""
    cols = read_csv_columns(path, POSE_COLUMNS)
    poses = np.repeat(np.eye(4)[None], len(cols["GPSTime"]), axis=0)
    euler = np.c_[cols["heading"], cols["pitch"], cols["roll"]]
    poses[:, :3, :3] = Rotation.from_euler("ZYX", euler).as_matrix().transpose(0, 2, 1)
    poses[:, :3, 3] = np.c_[cols["easting"], cols["northing"], cols["altitude"]]
    return np.rint(cols["GPSTime"]).astype(np.int64), poses


class BoreasSequence:
    """One Boreas sequence as a :class:`~distilvpr_ros.data.sample.Sequence` (camera frames + LiDAR)."""

    def __init__(self, root: Path, seq: str, pair_tolerance: float = 0.05):
        self.root = Path(root)
        self.run = seq
        self.dir = self.root / seq
        if not self.dir.is_dir():
            raise DataError(self.dir, "Boreas sequence folder not found")
        self.camera_us, camera_poses = read_pose_csv(self.dir / "applanix" / "camera_poses.csv")
        self.lidar_us, _ = read_pose_csv(self.dir / "applanix" / "lidar_poses.csv")
        order = np.argsort(self.camera_us)
        self.camera_us, camera_poses = self.camera_us[order], camera_poses[order]
        self.lidar_us = np.sort(self.lidar_us)
        T_camera_lidar = _load_matrix(self.dir / "calib" / "T_camera_lidar.txt", (4, 4))
        self.K = _load_matrix(self.dir / "calib" / "P_camera.txt", (4, 4))[:3, :3]
        self.timestamps = self.camera_us * 1e-6
        self.poses = camera_poses @ T_camera_lidar
        nearest, dt_us = nearest_stamps(self.camera_us, self.lidar_us)
        self._lidar_index = np.where(dt_us <= pair_tolerance * 1e6, nearest, -1)

    def image_path(self, i: int) -> Path:
        return self.dir / "camera" / f"{self.camera_us[i]}.png"

    def cloud_path(self, i: int) -> Path | None:
        j = self._lidar_index[i]
        return None if j < 0 else self.dir / "lidar" / f"{self.lidar_us[j]}.bin"

    @functools.cached_property
    def camera_info(self) -> CameraIntrinsics:
        """Intrinsics from ``P_camera.txt`` (images are rectified) and the size of the first image."""
        height, width = read_image_file(self.image_path(0)).shape[:2]
        return CameraIntrinsics(K=self.K, width=width, height=height, D=np.zeros(5))

    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Sample:
        i = range(len(self))[i]
        cloud_path = self.cloud_path(i)
        return Sample(
            image=read_image_file(self.image_path(i)),
            cloud=None if cloud_path is None else read_bin_cloud(cloud_path, "<f4", 6),
            pose=self.poses[i].copy(),
            timestamp=float(self.timestamps[i]),
            run=self.run,
            index=i,
            meta={"image_path": str(self.image_path(i)), "cloud_path": None if cloud_path is None else str(cloud_path)},
        )
