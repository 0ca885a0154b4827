"""KITTI odometry benchmark sequences.

On disk (``root`` is the ``dataset`` folder of the odometry download; frames numbered from 0)::

    <root>/sequences/<NN>/velodyne/<6 digits>.bin   float32 N x 4: x, y, z, reflectance
    <root>/sequences/<NN>/image_2/<6 digits>.png    left colour camera (image_3: right)
    <root>/sequences/<NN>/times.txt                 one time in seconds per frame
    <root>/sequences/<NN>/calib.txt                 "P0: 12 values" ... "P3:", "Tr:" (velodyne -> cam0)
    <root>/poses/<NN>.txt                           12 values per line: 3x4 pose of cam0 in the first
                                                    cam0 frame (only sequences 00-10 have poses)

KITTI's camera frame has x right, y down, z forward, so the ground plane of the ground-truth poses is
x/z. Poses here are re-expressed in a world frame with x forward (at the first frame), y left and z up,
and the body frame is the Velodyne's (x forward, y left, z up)::

    world_T_base = W_C @ cam0_first_T_cam0_i @ Tr        W_C = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]

so ``pose[:2, 3]`` is the planar position place ground truth needs. ``timestamps`` are seconds since the
start of the sequence (KITTI publishes no absolute times in the odometry set).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sensor_files import read_bin_cloud, read_image_file
from ..msg_codec import CameraIntrinsics
from ..sample import Sample

# Rotation taking KITTI camera axes (x right, y down, z forward) to x forward, y left, z up.
WORLD_T_CAMERA = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``calib.txt`` as ``{"P0".."P3": 3x4, "Tr": 4x4}``."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise DataError(path, f"cannot read calibration ({err.strerror or err})") from None
    calib = {}
    for line in lines:
        key, sep, values = line.partition(":")
        if not sep:
            continue
        try:
            calib[key.strip()] = np.array(values.split(), dtype=np.float64).reshape(3, 4)
        except ValueError:
            raise DataError(path, f"entry {key.strip()!r} is not 12 numbers") from None
    missing = [k for k in ("P0", "P1", "P2", "P3", "Tr") if k not in calib]
    if missing:
        raise DataError(path, f"missing calibration entries: {', '.join(missing)}")
    calib["Tr"] = np.vstack([calib["Tr"], [0, 0, 0, 1]])
    return calib


def _read_rows(path: Path, what: str, width: int) -> np.ndarray:
    try:
        rows = np.loadtxt(path, ndmin=2)
    except OSError:
        raise DataError(path, f"{what} file not found") from None
    except ValueError as err:
        raise DataError(path, f"malformed {what} file: {err}") from None
    if rows.shape[1] != width:
        raise DataError(path, f"expected {width} values per line, found {rows.shape[1]}")
    return rows


class KittiSequence:
    """One KITTI odometry sequence as a :class:`~distilvpr_ros.data.sample.Sequence`."""

    def __init__(self, root: Path, sequence: str | int, camera: str = "image_2"):
        if camera not in ("image_2", "image_3"):
            raise ValueError(f"camera must be 'image_2' or 'image_3', not {camera!r}")
        self.root = Path(root)
        self.run = f"{int(sequence):02d}"
        self.dir = self.root / "sequences" / self.run
        self.camera = camera
        calib = read_calib(self.dir / "calib.txt")
        self.K = calib["P2" if camera == "image_2" else "P3"][:, :3]
        self.timestamps = _read_rows(self.dir / "times.txt", "times", 1)[:, 0]
        poses_path = self.root / "poses" / f"{self.run}.txt"
        cam_poses = _read_rows(poses_path, "poses", 12).reshape(-1, 3, 4)
        if len(cam_poses) != len(self.timestamps):
            raise DataError(poses_path, f"{len(cam_poses)} poses for {len(self.timestamps)} frames in times.txt")
        first_cam0_T_cam0 = np.repeat(np.eye(4)[None], len(cam_poses), axis=0)
        first_cam0_T_cam0[:, :3, :] = cam_poses
        self.poses = WORLD_T_CAMERA @ first_cam0_T_cam0 @ calib["Tr"]

    def image_path(self, i: int) -> Path:
        return self.dir / self.camera / f"{i:06d}.png"

    def cloud_path(self, i: int) -> Path:
        return self.dir / "velodyne" / f"{i:06d}.bin"

    @functools.cached_property
    def camera_info(self) -> CameraIntrinsics:
        """Intrinsics of the chosen (rectified) camera and the size of its first image."""
        height, width = read_image_file(self.image_path(0)).shape[:2]
        return CameraIntrinsics(K=self.K, width=width, height=height, D=np.zeros(5))

    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Sample:
        i = range(len(self))[i]
        return Sample(
            image=read_image_file(self.image_path(i)),
            cloud=read_bin_cloud(self.cloud_path(i), "<f4", 4),
            pose=self.poses[i].copy(),
            timestamp=float(self.timestamps[i]),
            run=self.run,
            index=i,
            meta={"image_path": str(self.image_path(i)), "cloud_path": str(self.cloud_path(i))},
        )
