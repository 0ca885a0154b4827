"""ROS 2 bags in and out, without ROS: :class:`BagWriter`, :class:`BagSequence` and :func:`bag_summary`.

Bags are handled with ``rosbags`` (pure Python). The writer produces rosbag2 folders (format version 9,
storage ``mcap`` or ``sqlite3``) with message definitions embedded, serialised with the ROS 2 Kilted
typestore (the distribution of the PyPI rclpy wheels; Jazzy where an older ``rosbags`` lacks Kilted).

Topics and frames (defaults in :class:`BagTopics` / :class:`FrameIds`, which follow REP 105 and the usual
driver names)::

    /camera/image_raw             sensor_msgs/Image            rgb8, frame camera_optical
    /camera/image_raw/compressed  sensor_msgs/CompressedImage  jpeg or png, frame camera_optical
    /camera/camera_info           sensor_msgs/CameraInfo       plumb_bob, D = 0, P = [K | 0]
    /lidar/points                 sensor_msgs/PointCloud2      x y z intensity (f32) ring (u16) time (f32)
    /odom                         nav_msgs/Odometry            frame odom, child base_link
    /gps/fix                      sensor_msgs/NavSatFix        WGS84 degrees, metres

Every message written at time ``t`` carries header stamp ``t`` and is logged at ``t`` (ns).

Reading (:class:`BagSequence`) accepts rosbag2 folders (mcap or sqlite3, any ``rosbags``-readable
version), a bare ``.mcap`` or ``.db3`` file, and ROS 1 ``.bag`` files. One pass over the bag indexes the
stamps (header stamps; the log time where a header stamp is zero) of the camera and LiDAR topics and
decodes the small odometry/GNSS messages; images and clouds are decoded lazily in ``__getitem__`` by
looking their log time up in the bag (an indexed seek in both mcap and sqlite3), so memory stays
small whatever the bag size. Out-of-order stamps are sorted and exact duplicate stamps dropped, with a
warning. Poses come from odometry (linear/slerp interpolation to the camera stamps) or, without
odometry, from GNSS fixes projected to UTM with the yaw taken from the direction of travel.
"""

from __future__ import annotations

import functools
import os
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .errors import DataError
from .geometry import interpolate_poses
from .msg_codec import (
    CameraIntrinsics,
    camera_info_fields,
    camera_info_from_msg,
    cloud_from_pointcloud2,
    compressed_to_rgb,
    image_to_rgb,
    nearest_stamps,
    odometry_to_pose,
    pointcloud2_fields,
    pose_to_msg_fields,
    rgb_compressed_fields,
    rgb_image_fields,
    sec_to_ns,
    sec_to_stamp,
    stamp_to_sec,
)
from .sample import Sample

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
ODOMETRY = "nav_msgs/msg/Odometry"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"

BAG_VERSION = 9
TYPESTORE = Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.ROS2_JAZZY
_STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@functools.cache
def ros2_typestore():
    """The ``rosbags`` typestore used to write bags and to read bags without embedded definitions."""
    return get_typestore(TYPESTORE)


@dataclass(frozen=True)
class BagTopics:
    image: str = "/camera/image_raw"
    compressed_image: str = "/camera/image_raw/compressed"
    camera_info: str = "/camera/camera_info"
    cloud: str = "/lidar/points"
    odom: str = "/odom"
    gps: str = "/gps/fix"


@dataclass(frozen=True)
class FrameIds:
    map: str = "map"
    odom: str = "odom"
    base: str = "base_link"
    camera: str = "camera_optical"
    lidar: str = "lidar"
    gps: str = "gps"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class BagWriter:
    """Write a rosbag2 folder; use as a context manager. Topic connections are created on first write."""

    def __init__(
        self,
        path: Path,
        storage: str = "mcap",
        topics: BagTopics = BagTopics(),
        frames: FrameIds = FrameIds(),
    ):
        if storage not in _STORAGE:
            raise ValueError(f"unknown bag storage {storage!r}; use one of {sorted(_STORAGE)}")
        self.path = Path(path)
        if self.path.exists():
            raise DataError(self.path, "bag already exists; the writer only creates new bags")
        self.topics = topics
        self.frames = frames
        self._store = ros2_typestore()
        self._types = self._store.types
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=_STORAGE[storage])
        self._writer.open()
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _header(self, t: float, frame_id: str):
        sec, nanosec = sec_to_stamp(t)
        return self._types["std_msgs/msg/Header"](
            stamp=self._types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
        )

    def _write(self, topic: str, msgtype: str, t: float, msg: Any) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.path}: bag writer is closed")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
        self._writer.write(conn, sec_to_ns(t), self._store.serialize_cdr(msg, msgtype))

    def write_image(self, t: float, rgb: np.ndarray) -> None:
        fields = rgb_image_fields(rgb)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        msg = self._types[IMAGE](header=self._header(t, self.frames.camera), **fields)
        self._write(self.topics.image, IMAGE, t, msg)

    def write_compressed_image(self, t: float, rgb: np.ndarray, fmt: str = "jpeg") -> None:
        fields = rgb_compressed_fields(rgb, fmt)
        msg = self._types[COMPRESSED_IMAGE](
            header=self._header(t, self.frames.camera),
            format=fields["format"],
            data=np.frombuffer(fields["data"], dtype=np.uint8),
        )
        self._write(self.topics.compressed_image, COMPRESSED_IMAGE, t, msg)

    def write_camera_info(self, t: float, K: np.ndarray, width: int, height: int) -> None:
        roi = self._types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        msg = self._types[CAMERA_INFO](
            header=self._header(t, self.frames.camera),
            binning_x=0,
            binning_y=0,
            roi=roi,
            **camera_info_fields(K, width, height),
        )
        self._write(self.topics.camera_info, CAMERA_INFO, t, msg)

    def write_cloud(self, t: float, cloud: np.ndarray) -> None:
        fields = pointcloud2_fields(cloud)
        point_field = self._types["sensor_msgs/msg/PointField"]
        fields["fields"] = [point_field(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        msg = self._types[POINTCLOUD2](header=self._header(t, self.frames.lidar), **fields)
        self._write(self.topics.cloud, POINTCLOUD2, t, msg)

    def write_odom(
        self, t: float, pose: np.ndarray, linear_velocity: float = 0.0, angular_velocity: float = 0.0,
        topic: str | None = None,
    ) -> None:
        """Odometry at ``t`` on ``topic`` (default: ``topics.odom``)."""
        T = self._types
        values = pose_to_msg_fields(pose)
        pose_msg = T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](*values["position"]),
            orientation=T["geometry_msgs/msg/Quaternion"](*values["orientation"]),
        )
        twist = T["geometry_msgs/msg/Twist"](
            linear=T["geometry_msgs/msg/Vector3"](x=float(linear_velocity), y=0.0, z=0.0),
            angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=float(angular_velocity)),
        )
        msg = T[ODOMETRY](
            header=self._header(t, self.frames.odom),
            child_frame_id=self.frames.base,
            pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose_msg, covariance=np.zeros(36)),
            twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
        )
        self._write(topic or self.topics.odom, ODOMETRY, t, msg)

    def write_gps(self, t: float, latitude: float, longitude: float, altitude: float) -> None:
        T = self._types
        status_type = T["sensor_msgs/msg/NavSatStatus"]
        msg = T[NAVSATFIX](
            header=self._header(t, self.frames.gps),
            status=status_type(status=status_type.STATUS_FIX, service=status_type.SERVICE_GPS),
            latitude=float(latitude),
            longitude=float(longitude),
            altitude=float(altitude),
            position_covariance=np.zeros(9),
            position_covariance_type=T[NAVSATFIX].COVARIANCE_TYPE_UNKNOWN,
        )
        self._write(self.topics.gps, NAVSATFIX, t, msg)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _open_reader(path: Path) -> AnyReader:
    if not path.exists():
        raise DataError(path, "bag not found")
    reader = AnyReader([path], default_typestore=ros2_typestore())
    try:
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types for unreadable bags
        raise DataError(path, f"cannot open bag: {err}") from None
    return reader


def bag_summary(path: Path) -> dict[str, Any]:
    """Topics (type, message count), total count, start/end/duration in seconds of a bag."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        topics = {
            name: {"type": info.msgtype, "count": info.msgcount} for name, info in sorted(reader.topics.items())
        }
        count = reader.message_count
        start, end = (reader.start_time * 1e-9, reader.end_time * 1e-9) if count else (None, None)
    finally:
        reader.close()
    return {
        "path": str(path),
        "topics": topics,
        "message_count": count,
        "start": start,
        "end": end,
        "duration": None if start is None else end - start,
    }


def read_odometry(path: Path, topic: str = "/odom") -> tuple[np.ndarray, np.ndarray]:
    """(N,) stamps and (N, 4, 4) poses of every ``nav_msgs/Odometry`` message on ``topic``, in stamp order.

    Stamps are header stamps (the log time where a header stamp is zero); duplicates keep the first.
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            odoms = sorted({c.topic for c in reader.connections if c.msgtype == ODOMETRY}) or ["none"]
            raise DataError(path, f"no topic {topic}; odometry topics in the bag: {', '.join(odoms)}")
        if conns[0].msgtype != ODOMETRY:
            raise DataError(path, f"topic {topic} has type {conns[0].msgtype}, expected {ODOMETRY}")
        stamps, poses = [], []
        for conn, log_ns, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = stamp_to_sec(msg.header.stamp)
            stamps.append(stamp if stamp > 0 else log_ns * 1e-9)
            poses.append(odometry_to_pose(msg))
    finally:
        reader.close()
    if not stamps:
        raise DataError(path, f"odometry topic {topic} has no messages")
    keep = _sorted_unique(np.array(stamps), f"odometry ({topic})", path)
    return np.array(stamps)[keep], np.stack(poses)[keep]


def track_poses(t: np.ndarray, xyz: np.ndarray, min_speed: float = 0.5) -> np.ndarray:
    """Poses along a position track, yaw = direction of travel (roll = pitch = 0).

    The horizontal velocity is estimated by central differences in time; where the speed is below
    ``min_speed`` (m/s, standing still or GNSS jitter) the last valid heading is held (the first valid one
    before any motion; 0 if the track never moves).
    """
    t = np.asarray(t, dtype=float)
    xyz = np.asarray(xyz, dtype=float)
    poses = np.repeat(np.eye(4)[None], len(t), axis=0)
    poses[:, :3, 3] = xyz
    if len(t) < 2:
        return poses
    velocity = np.gradient(xyz[:, :2], t, axis=0)
    moving = np.hypot(velocity[:, 0], velocity[:, 1]) >= min_speed
    if not moving.any():
        return poses
    last = np.maximum.accumulate(np.where(moving, np.arange(len(t)), -1))
    last[last < 0] = np.flatnonzero(moving)[0]
    yaw = np.arctan2(velocity[last, 1], velocity[last, 0])
    c, s = np.cos(yaw), np.sin(yaw)
    poses[:, 0, 0], poses[:, 0, 1], poses[:, 1, 0], poses[:, 1, 1] = c, -s, s, c
    return poses


def _sorted_unique(stamps: np.ndarray, what: str, path: Path) -> np.ndarray:
    """Indices that sort ``stamps`` and keep the first of each exact duplicate, warning about either."""
    order = np.argsort(stamps, kind="stable")
    if np.any(np.diff(stamps) < 0):
        warnings.warn(f"{path}: {what} stamps are out of order; sorted them", stacklevel=3)
    keep = np.r_[True, np.diff(stamps[order]) > 0]
    if not keep.all():
        warnings.warn(
            f"{path}: dropped {np.count_nonzero(~keep)} {what} message(s) with duplicate stamps (kept the first)",
            stacklevel=3,
        )
    return order[keep]


@dataclass
class _Stream:
    """Index of one lazily decoded topic: stamps (s), bag log times (ns) and the rank among equal log times."""

    topic: str
    msgtype: str
    stamps: np.ndarray
    log_ns: np.ndarray
    rank: np.ndarray

    def select(self, keep: np.ndarray) -> None:
        self.stamps, self.log_ns, self.rank = self.stamps[keep], self.log_ns[keep], self.rank[keep]


class BagSequence:
    """A bag as a :class:`~distilvpr_ros.data.sample.Sequence`: one sample per camera frame.

    Each sample holds the camera image, the LiDAR cloud nearest in time if one lies within
    ``pair_tolerance`` seconds (else ``None``), and the pose interpolated to the camera stamp.
    ``require_cloud`` keeps only frames with a paired cloud. ``pose_source`` picks odometry, GNSS
    (UTM easting/northing, yaw from the direction of travel) or, with ``"auto"``, odometry when present,
    else GNSS, else no poses (NaN, with a warning; fine for replaying a bag against a map).

    Configured topic names that are absent fall back to the only topic of the right type, so bags with
    other names work without configuration when they are unambiguous.
    """

    def __init__(
        self,
        path: Path,
        topics: BagTopics = BagTopics(),
        run: str | None = None,
        pair_tolerance: float = 0.05,
        require_cloud: bool = False,
        pose_source: Literal["odom", "gps", "auto"] = "auto",
    ):
        if pose_source not in ("odom", "gps", "auto"):
            raise ValueError(f"pose_source must be 'odom', 'gps' or 'auto', not {pose_source!r}")
        self.path = Path(path)
        self.run = run or (self.path.stem if self.path.is_file() else self.path.name)
        self.pair_tolerance = float(pair_tolerance)
        self._reader: AnyReader | None = None
        self._reader_pid = -1
        self._close_reader = None

        reader = self._open()
        by_topic: dict[str, str] = {c.topic: c.msgtype for c in reader.connections}
        camera = self._pick(by_topic, (topics.image, IMAGE), (topics.compressed_image, COMPRESSED_IMAGE))
        if camera is None:
            listing = ", ".join(f"{t} ({m})" for t, m in sorted(by_topic.items())) or "none"
            raise DataError(
                self.path,
                f"no camera topic: expected {topics.image} ({IMAGE}) or {topics.compressed_image} "
                f"({COMPRESSED_IMAGE}); topics present: {listing}",
            )
        cloud = self._pick(by_topic, (topics.cloud, POINTCLOUD2))
        odom = self._pick(by_topic, (topics.odom, ODOMETRY))
        gps = self._pick(by_topic, (topics.gps, NAVSATFIX))
        info = self._pick(by_topic, (topics.camera_info, CAMERA_INFO))
        if pose_source == "odom" and odom is None:
            raise DataError(self.path, f"pose_source='odom' but the bag has no {ODOMETRY} topic")
        if pose_source == "gps" and gps is None:
            raise DataError(self.path, f"pose_source='gps' but the bag has no {NAVSATFIX} topic")
        if require_cloud and cloud is None:
            raise DataError(self.path, f"require_cloud=True but the bag has no {POINTCLOUD2} topic")
        use_odom = odom is not None and pose_source in ("odom", "auto")
        use_gps = not use_odom and gps is not None and pose_source in ("gps", "auto")

        pose_topic = odom if use_odom else gps if use_gps else None
        lazy, pose_rows = self._index(reader, camera, cloud, info, pose_topic)

        self.image_topic, self.image_type = camera, by_topic[camera]
        self._camera = self._stream(camera, by_topic[camera], lazy[camera], "camera")
        if len(self._camera.stamps) == 0:
            raise DataError(self.path, f"camera topic {camera} has no messages")
        self.cloud_topic = cloud
        self._cloud = self._stream(cloud, POINTCLOUD2, lazy[cloud], "LiDAR") if cloud is not None else None

        cam_t = self._camera.stamps
        self._cloud_index = np.full(len(cam_t), -1)
        if self._cloud is not None and len(self._cloud.stamps):
            idx, dt = nearest_stamps(cam_t, self._cloud.stamps)
            self._cloud_index = np.where(dt <= self.pair_tolerance, idx, -1)
        if require_cloud:
            keep = self._cloud_index >= 0
            if not keep.any():
                raise DataError(
                    self.path, f"no camera frame has a {cloud} cloud within {self.pair_tolerance} s"
                )
            self._camera.select(keep)
            self._cloud_index = self._cloud_index[keep]

        self.timestamps = self._camera.stamps.copy()
        self.utm_zone: tuple[int, str] | None = None
        if use_odom:
            self.pose_source = "odom"
            self.poses = self._poses_from_odom(np.array(pose_rows), odom)
        elif use_gps:
            self.pose_source = "gps"
            self.poses = self._poses_from_gps(np.array(pose_rows), gps)
        else:
            self.pose_source = "none"
            warnings.warn(f"{self.path}: no odometry or GNSS topic; poses are NaN", stacklevel=2)
            self.poses = np.full((len(self.timestamps), 4, 4), np.nan)

    # -- index helpers ------------------------------------------------------------------------------

    def _index(self, reader: AnyReader, camera: str, cloud: str | None, info: str | None, pose_topic: str | None):
        """One pass over the bag: stamps of camera/cloud messages, pose rows, the first camera info.

        Returns ``{topic: [(stamp, log_ns, rank among equal log times), ...]}`` for camera and cloud and
        the pose rows: ``(stamp, 3x4 pose...)`` for odometry, ``(stamp, lat, lon, alt)`` for valid fixes.
        """
        lazy: dict[str | None, list] = {camera: [], cloud: []}
        pose_rows: list[tuple[float, ...]] = []
        self.camera_info: CameraIntrinsics | None = None
        seen: Counter = Counter()
        wanted = [c for c in reader.connections if c.topic in {camera, cloud, info, pose_topic}]
        try:
            for conn, log_ns, raw in reader.messages(connections=wanted):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = stamp_to_sec(msg.header.stamp)
                stamp = stamp if stamp > 0 else log_ns * 1e-9
                if conn.topic in lazy:
                    lazy[conn.topic].append((stamp, log_ns, seen[conn.topic, log_ns]))
                    seen[conn.topic, log_ns] += 1
                elif conn.topic == info:
                    if self.camera_info is None:
                        self.camera_info = camera_info_from_msg(msg)
                elif conn.msgtype == ODOMETRY:
                    pose_rows.append((stamp, *odometry_to_pose(msg)[:3, :].reshape(-1)))
                elif msg.status.status >= 0 and np.isfinite([msg.latitude, msg.longitude, msg.altitude]).all():
                    pose_rows.append((stamp, msg.latitude, msg.longitude, msg.altitude))
        except AnyReaderError as err:
            raise DataError(self.path, f"cannot decode message: {err}") from None
        return lazy, pose_rows

    def _pick(self, by_topic: dict[str, str], *choices: tuple[str, str]) -> str | None:
        """The configured topic of the first choice present, else the only topic of a choice's type."""
        for topic, msgtype in choices:
            if topic in by_topic:
                if by_topic[topic] != msgtype:
                    raise DataError(self.path, f"topic {topic} has type {by_topic[topic]}, expected {msgtype}")
                return topic
        for topic, msgtype in choices:
            candidates = sorted(t for t, m in by_topic.items() if m == msgtype)
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise DataError(
                    self.path,
                    f"{topic} is absent and several {msgtype} topics could replace it ({', '.join(candidates)}); "
                    "name the one to use in BagTopics",
                )
        return None

    def _stream(self, topic: str, msgtype: str, rows: list, what: str) -> _Stream:
        table = np.array(rows, dtype=[("t", "f8"), ("ns", "i8"), ("rank", "i8")])
        keep = _sorted_unique(table["t"], f"{what} ({topic})", self.path)
        return _Stream(topic, msgtype, table["t"][keep], table["ns"][keep], table["rank"][keep])

    def _check_span(self, t_src: np.ndarray, what: str) -> None:
        outside = np.count_nonzero((self.timestamps < t_src[0]) | (self.timestamps > t_src[-1]))
        if outside:
            warnings.warn(
                f"{self.path}: {outside} camera frame(s) lie outside the {what} time span; their poses are "
                "clamped to the nearest end",
                stacklevel=3,
            )

    def _poses_from_odom(self, rows: np.ndarray, topic: str) -> np.ndarray:
        if len(rows) == 0:
            raise DataError(self.path, f"odometry topic {topic} has no messages")
        keep = _sorted_unique(rows[:, 0], f"odometry ({topic})", self.path)
        t_src = rows[keep, 0]
        poses = np.repeat(np.eye(4)[None], len(keep), axis=0)
        poses[:, :3, :] = rows[keep, 1:].reshape(-1, 3, 4)
        self._check_span(t_src, "odometry")
        return interpolate_poses(self.timestamps, t_src, poses)

    def _poses_from_gps(self, rows: np.ndarray, topic: str) -> np.ndarray:
        import utm

        if len(rows) == 0:
            raise DataError(self.path, f"GNSS topic {topic} has no valid fixes")
        keep = _sorted_unique(rows[:, 0], f"GNSS ({topic})", self.path)
        t_src, lat, lon, alt = rows[keep].T
        _, _, number, letter = utm.from_latlon(lat[0], lon[0])
        easting, northing, _, _ = utm.from_latlon(lat, lon, force_zone_number=number, force_zone_letter=letter)
        self.utm_zone = (number, letter)
        self._check_span(t_src, "GNSS")
        return interpolate_poses(self.timestamps, t_src, track_poses(t_src, np.c_[easting, northing, alt]))

    # -- lazy decoding ------------------------------------------------------------------------------

    def _open(self) -> AnyReader:
        """The open reader of this process (reopened after a fork: readers seek a shared file)."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = _open_reader(self.path)
            self._reader_pid = os.getpid()
            self._close_reader = weakref.finalize(self, self._reader.close)
        return self._reader

    def close(self) -> None:
        if self._close_reader is not None and self._reader_pid == os.getpid():
            self._close_reader()
        self._reader, self._close_reader = None, None

    def __enter__(self) -> BagSequence:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_reader=None, _reader_pid=-1, _close_reader=None)
        return state

    def _fetch(self, stream: _Stream, k: int) -> Any:
        reader = self._open()
        conns = [c for c in reader.connections if c.topic == stream.topic]
        start = int(stream.log_ns[k])
        for rank, (conn, _, raw) in enumerate(reader.messages(connections=conns, start=start, stop=start + 1)):
            if rank == stream.rank[k]:
                try:
                    return reader.deserialize(raw, conn.msgtype)
                except Exception as err:
                    raise DataError(self.path, f"{stream.topic} at t={stream.stamps[k]:.6f}: {err}") from None
        raise DataError(self.path, f"{stream.topic} message logged at {start} ns not found (bag changed?)")

    def _decode(self, stream: _Stream, k: int, decode) -> np.ndarray:
        try:
            return decode(self._fetch(stream, k))
        except ValueError as err:
            raise DataError(self.path, f"{stream.topic} at t={stream.stamps[k]:.6f}: {err}") from None

    def image(self, i: int) -> np.ndarray:
        """RGB image of frame ``i``."""
        decode = image_to_rgb if self.image_type == IMAGE else compressed_to_rgb
        return self._decode(self._camera, i, decode)

    def cloud(self, i: int) -> np.ndarray | None:
        """Paired cloud of frame ``i`` (N x 6 float32), or ``None`` when none was within tolerance."""
        j = int(self._cloud_index[i])
        if j < 0:
            return None
        cloud = self._decode(self._cloud, j, cloud_from_pointcloud2)
        if len(cloud) == 0:
            raise DataError(self.path, f"{self.cloud_topic} at t={self._cloud.stamps[j]:.6f}: no finite points")
        return cloud

    @property
    def cloud_timestamps(self) -> np.ndarray:
        """Stamp of the cloud paired with each frame (NaN where none)."""
        if self._cloud is None:
            return np.full(len(self), np.nan)
        return np.where(self._cloud_index >= 0, self._cloud.stamps[np.maximum(self._cloud_index, 0)], np.nan)

    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        i %= n
        return Sample(
            image=self.image(i),
            cloud=self.cloud(i),
            pose=self.poses[i].copy(),
            timestamp=float(self.timestamps[i]),
            run=self.run,
            index=i,
            meta={"bag": str(self.path), "image_topic": self.image_topic, "cloud_stamp": self.cloud_timestamps[i]},
        )
