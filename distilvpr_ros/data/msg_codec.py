"""ROS-free conversions between ROS 2 sensor messages and the package's numpy conventions.

Every function here works on *any* object with the message's attributes (duck typing): messages
deserialised by ``rosbags``, messages received by rclpy nodes, or simple namespaces in tests. Nothing
imports rclpy or a ROS message package. The builders (``*_fields``) return plain dicts of field values
that the caller passes to whatever message class it has (``rosbags`` typestore classes in the bag writer,
``sensor_msgs.msg`` classes in the ROS layer).

Conventions (see :mod:`distilvpr_ros.data.sample`):

* images come out as ``H x W x 3`` uint8 RGB, C-contiguous;
* clouds come out as ``N x 6`` float32 ``x, y, z, intensity, ring, time`` (:data:`CLOUD_FIELDS`), read and
  laid out with ``pointcloud2`` (sensor_msgs_py's API without ROS); what is ours is the field aliases
  (``i``, ``t``, ``timestamp``), the checks with clear messages, dropping non-finite points and the time
  handling: the ``time`` column is the per-point time offset in seconds (integer time fields, as Ouster's
  ``t``, are nanoseconds and are converted; absolute float times, as Hesai's ``timestamp``, are made
  relative to the message's header stamp);
* poses are 4x4 float64 transforms, quaternions are ``x, y, z, w``;
* stamps are float seconds (``sec + nanosec * 1e-9``).

Malformed messages raise :class:`ValueError` with a message that says what is wrong (the bag and node
layers add the file or topic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pointcloud2

from .geometry import make_pose, pose_to_xyz_quat
from .sample import CLOUD_FIELDS

# --------------------------------------------------------------------------------------------------
# Stamps
# --------------------------------------------------------------------------------------------------


def stamp_to_sec(stamp: Any) -> float:
    """``builtin_interfaces/Time`` (``sec``, ``nanosec``) to float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> tuple[int, int]:
    """Float seconds to ``(sec, nanosec)`` without losing nanoseconds to float64 rounding."""
    sec = math.floor(t)
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return int(sec), nanosec


def sec_to_ns(t: float) -> int:
    """Float seconds to integer nanoseconds (the bag log-time unit)."""
    sec, nanosec = sec_to_stamp(t)
    return sec * 1_000_000_000 + nanosec


def ns_to_sec(t_ns: int) -> float:
    """Integer nanoseconds (a bag log time) to float seconds."""
    return t_ns * 1e-9


def nearest_stamps(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp in sorted, non-empty ``ref`` for each ``query`` stamp, and |difference|."""
    query, ref = np.asarray(query), np.asarray(ref)
    pos = np.searchsorted(ref, query)
    lo, hi = np.clip(pos - 1, 0, len(ref) - 1), np.clip(pos, 0, len(ref) - 1)
    idx = np.where(np.abs(ref[lo] - query) <= np.abs(ref[hi] - query), lo, hi)
    return idx, np.abs(ref[idx] - query)


def _as_uint8(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` (numpy array, bytes, bytearray, array.array, list)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

# encoding -> (channels, bytes per channel)
_IMAGE_LAYOUT = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "mono16": (1, 2),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
}
SUPPORTED_ENCODINGS = tuple(_IMAGE_LAYOUT)

# Bayer pattern (first two rows, top-left 2x2 block) -> OpenCV demosaicing code.
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerRGGB2RGB,
    "bggr": cv2.COLOR_BayerBGGR2RGB,
    "gbrg": cv2.COLOR_BayerGBRG2RGB,
    "grbg": cv2.COLOR_BayerGRBG2RGB,
}


def _to_uint8(px: np.ndarray) -> np.ndarray:
    """16-bit to 8-bit by full-range scaling (65535 -> 255), as cv_bridge does for mono16 -> mono8."""
    if px.dtype == np.uint8:
        return px
    return ((px.astype(np.uint32) + 128) // 257).astype(np.uint8)


def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """RGB from a single-channel Bayer mosaic; ``pattern`` names the top-left 2x2 block (``"gbrg"``)."""
    code = _BAYER_TO_RGB.get(pattern.lower())
    if code is None:
        raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {sorted(_BAYER_TO_RGB)}")
    return cv2.cvtColor(_to_uint8(raw), code)


def image_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` to ``H x W x 3`` uint8 RGB.

    Supports the encodings in :data:`SUPPORTED_ENCODINGS`; row padding (``step`` larger than the packed
    row) is skipped, 16-bit data honours ``is_bigendian`` and is scaled to 8 bits, mono is replicated to
    three channels, Bayer mosaics are demosaiced.
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in _IMAGE_LAYOUT:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, nbytes = _IMAGE_LAYOUT[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"empty image ({width}x{height})")
    row_bytes = width * channels * nbytes
    if step < row_bytes:
        raise ValueError(
            f"step {step} is smaller than a packed row ({width} px x {channels} ch x {nbytes} B = "
            f"{row_bytes}) for encoding {encoding}"
        )
    buf = _as_uint8(msg.data)
    if buf.size != step * height:
        raise ValueError(
            f"image data has {buf.size} bytes, expected step x height = {step} x {height} = {step * height}"
        )
    rows = np.ascontiguousarray(buf.reshape(height, step)[:, :row_bytes])
    if nbytes == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        px = _to_uint8(rows.view(dtype).astype(np.uint16))
    else:
        px = rows
    px = px.reshape(height, width, channels)
    if encoding.startswith("bayer_"):
        rgb = demosaic(px[..., 0], encoding[len("bayer_") : -1])
    elif channels == 1:
        rgb = np.repeat(px, 3, axis=2)
    elif encoding.startswith("rgb"):
        rgb = px[..., :3]
    else:  # bgr8, bgr16, bgra8
        rgb = px[..., 2::-1]
    return np.ascontiguousarray(rgb)


MAX_DECODED_PIXELS = 8192 * 8192  # 67 MP: larger than any camera a robot carries; 200+ MB decoded
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def encoded_size(buf: np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` read from a PNG or JPEG header without decoding; None for other data or a
    header that cannot be parsed (the decoder then reports the problem)."""
    b = buf.tobytes() if buf.size <= 64 else buf[: min(buf.size, 1 << 16)].tobytes()
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24 and b[12:16] == b"IHDR":
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(b):  # walk the JPEG segments up to the frame header (SOFn)
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
        i += 2 + length
    return None


def encoded_to_rgb(data: Any, bayer: str | None = None, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes to ``H x W x 3`` uint8 RGB (16-bit scaled, grey replicated, alpha dropped).

    ``bayer`` names the mosaic pattern of single-channel images that are raw Bayer data (Oxford RobotCar's
    stereo camera stores ``"gbrg"``); without it single-channel images are treated as grey. An image whose
    header declares more than ``max_pixels`` pixels is refused before decoding (a few kB of PNG can
    declare gigabytes of pixels).
    """
    buf = _as_uint8(data)
    size = encoded_size(buf) if buf.size else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ValueError(f"encoded image declares {size[0]}x{size[1]} pixels, more than the limit of "
                         f"{max_pixels} ({buf.size} bytes; refused before decoding)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ValueError(f"could not decode {buf.size} bytes as an image (corrupt or not PNG/JPEG)")
    if img.ndim == 2:
        return demosaic(img, bayer) if bayer else np.repeat(_to_uint8(img)[..., None], 3, axis=2)
    img = _to_uint8(img)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (``format`` jpeg or png, as image_transport writes it) to RGB."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise ValueError(f"compressed depth images are not camera images (format {msg.format!r})")
    return encoded_to_rgb(msg.data)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


def rgb_image_fields(rgb: np.ndarray) -> dict[str, Any]:
    """Header-less ``sensor_msgs/Image`` fields (encoding rgb8, packed rows) for an RGB array."""
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": 3 * width,
        "data": rgb.tobytes(),
    }


def rgb_compressed_fields(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> dict[str, Any]:
    """Header-less ``sensor_msgs/CompressedImage`` fields: ``format`` (jpeg/png) and encoded ``data``."""
    rgb = _check_rgb(rgb)
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        fmt = "jpeg"
    elif fmt == "png":
        ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    else:
        raise ValueError(f"unsupported compressed image format {fmt!r}; use 'jpeg' or 'png'")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {rgb.shape} image as {fmt}")
    return {"format": fmt, "data": enc.tobytes()}


# --------------------------------------------------------------------------------------------------
# Camera intrinsics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics as carried by ``sensor_msgs/CameraInfo``."""

    K: np.ndarray  # 3x3
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    D: np.ndarray | None = None


def camera_info_fields(K: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """Header-less ``sensor_msgs/CameraInfo`` fields: plumb_bob, zero distortion, R = I, P = [K | 0]."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.hstack([K, np.zeros((3, 1))])
    return {
        "height": int(height),
        "width": int(width),
        "distortion_model": "plumb_bob",
        "d": np.zeros(5),
        "k": K.reshape(-1),
        "r": np.eye(3).reshape(-1),
        "p": P.reshape(-1),
    }


def camera_info_from_msg(msg: Any) -> CameraIntrinsics:
    """:class:`CameraIntrinsics` from a ``sensor_msgs/CameraInfo``."""
    return CameraIntrinsics(
        K=np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
        width=int(msg.width),
        height=int(msg.height),
        distortion_model=str(msg.distortion_model),
        D=np.asarray(msg.d, dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------
# Point clouds
# --------------------------------------------------------------------------------------------------

# sensor_msgs/PointField datatype constants -> numpy type code (byte order added per message).
POINTFIELD_DTYPES = {datatype: dtype.str[1:] for datatype, dtype in pointcloud2.FIELD_TYPE_TO_NP.items()}

# Output column -> accepted field names, in order of preference.
_FIELD_NAMES = {
    "x": ("x",),
    "y": ("y",),
    "z": ("z",),
    "intensity": ("intensity", "i"),
    "ring": ("ring",),
    "time": ("time", "t", "timestamp"),
}

# Layout written by :func:`pointcloud2_fields`: the packed Velodyne ``PointXYZIRT`` layout.
CLOUD_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2"), ("time", "<f4")]
)


def cloud_from_pointcloud2(msg: Any) -> np.ndarray:
    """``sensor_msgs/PointCloud2`` to ``N x 6`` float32 ``x, y, z, intensity, ring, time``.

    Fields are read at their offsets with their own datatype and byte order (``is_bigendian``), rows
    at ``row_step`` and points at ``point_step``; columns missing from the message are 0. Points with a
    non-finite coordinate, intensity or time are dropped (organised and non-dense clouds mark invalid
    returns with NaN). Raises :class:`ValueError` when x/y/z are missing, a field does not fit in
    ``point_step``, or the data length is not ``row_step * height``.
    """
    fields = {str(f.name): f for f in msg.fields}
    chosen: dict[str, Any] = {}
    for column, names in _FIELD_NAMES.items():
        name = next((n for n in names if n in fields), None)
        if name is not None:
            chosen[column] = fields[name]
    missing = [c for c in ("x", "y", "z") if c not in chosen]
    if missing:
        raise ValueError(f"PointCloud2 has no {'/'.join(missing)} field (fields: {sorted(fields)})")

    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    for field in chosen.values():
        code = POINTFIELD_DTYPES.get(int(field.datatype))
        if code is None:
            raise ValueError(f"PointCloud2 field {field.name!r} has unknown datatype {field.datatype}")
        size = np.dtype(code).itemsize
        if int(field.offset) + size > point_step:
            raise ValueError(
                f"PointCloud2 field {field.name!r} (offset {field.offset}, {size} B) "
                f"does not fit in point_step {point_step}"
            )
    if row_step < width * point_step:
        raise ValueError(f"PointCloud2 row_step {row_step} < width x point_step = {width * point_step}")
    buf = _as_uint8(msg.data)
    if buf.size != row_step * height:
        raise ValueError(
            f"PointCloud2 data has {buf.size} bytes, expected row_step x height = "
            f"{row_step} x {height} = {row_step * height}"
        )
    if width * height == 0:
        return np.zeros((0, len(CLOUD_FIELDS)), dtype=np.float32)

    # pointcloud2 reads the chosen fields (strided rows and points, byte order) into a structured array
    fields = [pointcloud2.PointField(str(f.name), int(f.offset), int(f.datatype)) for f in chosen.values()]
    view = SimpleNamespace(fields=fields, height=height, width=width, point_step=point_step, row_step=row_step,
                           data=buf, is_bigendian=bool(msg.is_bigendian), is_dense=True)
    points = pointcloud2.read_points(view)

    out = np.zeros((points.size, len(CLOUD_FIELDS)), dtype=np.float32)
    for k, column in enumerate(CLOUD_FIELDS):
        if column == "time" and column in chosen:
            out[:, k] = _relative_point_times(points[str(chosen["time"].name)], msg)
        elif column in chosen:
            out[:, k] = points[str(chosen[column].name)]
    return out[np.isfinite(out).all(axis=1)]


def _relative_point_times(t: np.ndarray, msg: Any) -> np.ndarray:
    """Per-point time offsets in seconds (integer fields are nanoseconds; absolute times made relative)."""
    if np.issubdtype(t.dtype, np.integer):
        return t.astype(np.float64) * 1e-9
    t = t.astype(np.float64)
    finite = t[np.isfinite(t)]
    if finite.size and np.abs(finite).max() > 1e6:  # absolute (epoch) seconds
        header = getattr(msg, "header", None)
        origin = stamp_to_sec(header.stamp) if header is not None else finite.min()
        return t - origin
    return t


def pointcloud2_fields(cloud: np.ndarray) -> dict[str, Any]:
    """Header-less ``sensor_msgs/PointCloud2`` fields for an ``N x C`` cloud (C >= 3).

    Layout :data:`CLOUD_DTYPE` (x, y, z, intensity float32, ring uint16, time float32; 22 bytes, little
    endian); columns the cloud lacks are written as 0. ``fields`` is a list of
    ``(name, offset, datatype, count)`` tuples.
    """
    cloud = np.asarray(cloud)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"expected an N x C cloud with C >= 3, got shape {cloud.shape}")
    packed = np.zeros(len(cloud), dtype=CLOUD_DTYPE)
    for k, name in enumerate(CLOUD_FIELDS[: min(cloud.shape[1], len(CLOUD_FIELDS))]):
        if name == "ring":
            packed[name] = np.clip(np.nan_to_num(np.rint(cloud[:, k])), 0, np.iinfo(np.uint16).max)
        else:
            packed[name] = cloud[:, k]
    fields = [(f.name, f.offset, f.datatype, f.count) for f in pointcloud2.fields_from_dtype(CLOUD_DTYPE)]
    return {
        "height": 1,
        "width": len(cloud),
        "fields": fields,
        "is_bigendian": False,
        "point_step": CLOUD_DTYPE.itemsize,
        "row_step": CLOUD_DTYPE.itemsize * len(cloud),
        "data": packed.tobytes(),
        "is_dense": bool(np.isfinite(cloud[:, :3]).all()),
    }


# --------------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------------


def pose_to_msg_fields(pose: np.ndarray) -> dict[str, tuple[float, ...]]:
    """``geometry_msgs/Pose`` values of a 4x4 transform: ``position`` (x, y, z), ``orientation`` (x, y, z, w)."""
    xyz, quat = pose_to_xyz_quat(np.asarray(pose, dtype=np.float64))
    return {"position": tuple(float(v) for v in xyz), "orientation": tuple(float(v) for v in quat)}


def pose_from_msg(pose_msg: Any) -> np.ndarray:
    """4x4 transform from a ``geometry_msgs/Pose`` (``.position``, ``.orientation``)."""
    p, q = pose_msg.position, pose_msg.orientation
    return make_pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def odometry_to_pose(msg: Any) -> np.ndarray:
    """4x4 ``header.frame_id``-from-``child_frame_id`` pose of a ``nav_msgs/Odometry``."""
    return pose_from_msg(msg.pose.pose)
