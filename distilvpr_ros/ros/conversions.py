"""rclpy message construction from numpy (the ROS-free codec lives in ``data.msg_codec``)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..data import msg_codec


def stamp_from_sec(t: float) -> Time:
    sec, nanosec = msg_codec.sec_to_stamp(t)
    return Time(sec=sec, nanosec=nanosec)


def header(t: float, frame_id: str) -> Header:
    return Header(stamp=stamp_from_sec(t), frame_id=frame_id)


def image_msg(rgb: np.ndarray, t: float, frame_id: str) -> Image:
    f = msg_codec.rgb_image_fields(rgb)
    return Image(header=header(t, frame_id), **f)


def pointcloud2_msg(cloud: np.ndarray, t: float, frame_id: str) -> PointCloud2:
    f = msg_codec.pointcloud2_fields(cloud)
    fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f.pop("fields")]
    return PointCloud2(header=header(t, frame_id), fields=fields, **f)
