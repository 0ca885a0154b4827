"""rclpy messages from the package's numpy and matcher types: stamps, headers, sensor messages, outputs.

The ROS-free side (message fields from numpy, stamps as ``(sec, nanosec)``, decoding) is
:mod:`distilvpr_ros.data.msg_codec`; this module wraps it in rclpy classes. Every float-seconds ↔ ROS time
conversion goes through :func:`stamp_from_sec` / :func:`msg_stamp` here (``msg_codec`` underneath).

Output layouts are the node contract (README "ROS 2 nodes"): ``place_match`` = PoseWithCovarianceStamped,
``place_candidates`` = PoseArray + ``place_candidates/scores`` Float64MultiArray (+ ``place_candidates/inliers``
with verification), ``loop_closure`` = ``[t_query, t_match]``, ``loop_closure/transform`` =
``[t_query, t_match, x, y, z, qx, qy, qz, qw, cov36]``, ``markers`` = MarkerArray, ``~/debug/matches`` = Image.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovarianceStamped
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header, MultiArrayDimension, MultiArrayLayout
from visualization_msgs.msg import Marker, MarkerArray

from ..data import msg_codec
from ..data.geometry import pose_to_xyz_quat
from ..mapping.matcher import Candidate, MatchResult

# --------------------------------------------------------------------------------------------------
# Stamps, headers, type names
# --------------------------------------------------------------------------------------------------


def stamp_from_sec(t: float) -> Time:
    """``builtin_interfaces/Time`` from float seconds (no nanosecond lost to float rounding)."""
    sec, nanosec = msg_codec.sec_to_stamp(t)
    return Time(sec=sec, nanosec=nanosec)


def msg_stamp(msg) -> float:
    """Header stamp of a message in float seconds."""
    return msg_codec.stamp_to_sec(msg.header.stamp)


def header(t: float, frame_id: str) -> Header:
    return Header(stamp=stamp_from_sec(t), frame_id=frame_id)


def type_name(msg_type: type) -> str:
    """The ROS 2 type name of an rclpy message class, e.g. ``geometry_msgs/msg/PoseArray``."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


# --------------------------------------------------------------------------------------------------
# Sensor messages
# --------------------------------------------------------------------------------------------------


def image_msg(rgb: np.ndarray, t: float, frame_id: str) -> Image:
    f = msg_codec.rgb_image_fields(rgb)
    return Image(header=header(t, frame_id), **f)


def pointcloud2_msg(cloud: np.ndarray, t: float, frame_id: str) -> PointCloud2:
    f = msg_codec.pointcloud2_fields(cloud)
    fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f.pop("fields")]
    return PointCloud2(header=header(t, frame_id), fields=fields, **f)


# --------------------------------------------------------------------------------------------------
# Output messages
# --------------------------------------------------------------------------------------------------


def pose_msg(pose7: np.ndarray) -> Pose:
    """``geometry_msgs/Pose`` from ``x y z qx qy qz qw``."""
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in pose7[:3])
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = (float(v) for v in pose7[3:7])
    return p


def place_match_msg(result: MatchResult, frame_id: str) -> PoseWithCovarianceStamped:
    """Best match as ``PoseWithCovarianceStamped``: header = query stamp + map frame, the keyframe's pose,
    the matcher's 6x6 covariance (row-major)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header(result.stamp, frame_id)
    msg.pose.pose = pose_msg(result.best.pose)
    msg.pose.covariance = [float(v) for v in np.asarray(result.covariance, dtype=np.float64).reshape(-1)]
    return msg


def candidates_msgs(result: MatchResult, frame_id: str) -> tuple[PoseArray, Float64MultiArray]:
    """``place_candidates`` (PoseArray, rank order) and ``place_candidates/scores``.

    Scores layout: ``data = [t_query, id_1, score_1, t_1, id_2, score_2, t_2, ...]`` (``data_offset = 1``
    skips ``t_query``; dim 0 ``candidate`` size k, dim 1 ``id_score_stamp`` size 3); ids are map keyframe
    ids, stamps seconds, scores similarities (higher is better).
    """
    poses = PoseArray(header=header(result.stamp, frame_id), poses=[pose_msg(c.pose) for c in result.candidates])
    k = len(result.candidates)
    data = [float(result.stamp)]
    for c in result.candidates:
        data += [float(c.id), float(c.score), float(c.stamp)]
    layout = MultiArrayLayout(dim=[MultiArrayDimension(label="candidate", size=k, stride=3 * k),
                                   MultiArrayDimension(label="id_score_stamp", size=3, stride=3)], data_offset=1)
    return poses, Float64MultiArray(layout=layout, data=data)


def loop_closure_msg(t_query: float, t_match: float) -> Float64MultiArray:
    """LIO-SAM / LVI-SAM external loop: ``[t_current, t_previous]`` in seconds."""
    return Float64MultiArray(data=[float(t_query), float(t_match)])


#: ``loop_closure/transform`` layout: one dimension whose label names the 45 values.
TRANSFORM_LABEL = "t_query,t_match,x,y,z,qx,qy,qz,qw,covariance_6x6_row_major"
TRANSFORM_SIZE = 45
#: ``place_candidates/inliers``: per candidate, whether verification accepted it (1), rejected it (0) or never
#: checked it (-1, e.g. after an earlier candidate was accepted).
CHECK_ACCEPTED, CHECK_REJECTED, CHECK_SKIPPED = 1.0, 0.0, -1.0


def transform_msg(t_query: float, t_match: float, match_T_query: np.ndarray,
                  covariance: np.ndarray) -> Float64MultiArray:
    """``loop_closure/transform``: ``[t_query, t_match, x, y, z, qx, qy, qz, qw, cov_0 .. cov_35]``: the query's
    base pose in the matched keyframe's base frame (``match_base_T_query_base``), its 6x6 covariance (row-major;
    x, y, z, roll, pitch, yaw about the keyframe's axes), keyed by both stamps (s)."""
    xyz, quat = pose_to_xyz_quat(np.asarray(match_T_query, dtype=np.float64))
    cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    data = [float(t_query), float(t_match), *map(float, xyz), *map(float, quat), *map(float, cov.reshape(-1))]
    layout = MultiArrayLayout(dim=[MultiArrayDimension(label=TRANSFORM_LABEL, size=TRANSFORM_SIZE,
                                                       stride=TRANSFORM_SIZE)], data_offset=0)
    return Float64MultiArray(layout=layout, data=data)


def parse_transform(data) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(t_query, t_match, match_T_query 4x4, covariance 6x6)`` of a ``loop_closure/transform`` message's data."""
    from ..data.geometry import make_pose

    d = np.asarray(data, dtype=np.float64)
    if len(d) != TRANSFORM_SIZE:
        raise ValueError(f"loop_closure/transform must hold {TRANSFORM_SIZE} values, got {len(d)}")
    return float(d[0]), float(d[1]), make_pose(d[2:5], d[5:9]), d[9:].reshape(6, 6)


def inliers_msg(t_query: float, descriptor_accepted: bool, verified: bool,
                rows: Iterable[tuple[int, int, float]]) -> Float64MultiArray:
    """``place_candidates/inliers``: ``[t_query, descriptor_accepted, verified, id_1, inliers_1, check_1, ...]``
    (``data_offset = 3``; dim 0 ``candidate`` size k, dim 1 ``id_inliers_check`` size 3), candidates in the order of
    ``place_candidates``, then keyframes verified only for being near the tracking prediction; ``check``:
    :data:`CHECK_ACCEPTED` 1, :data:`CHECK_REJECTED` 0, :data:`CHECK_SKIPPED` -1."""
    rows = list(rows)
    data = [float(t_query), float(bool(descriptor_accepted)), float(bool(verified))]
    for id_, inliers, check in rows:
        data += [float(id_), float(inliers), float(check)]
    k = len(rows)
    layout = MultiArrayLayout(dim=[MultiArrayDimension(label="candidate", size=k, stride=3 * k),
                                   MultiArrayDimension(label="id_inliers_check", size=3, stride=3)], data_offset=3)
    return Float64MultiArray(layout=layout, data=data)


def matches_image(query: np.ndarray, keyframe: np.ndarray, uv_query: np.ndarray, uv_keyframe: np.ndarray,
                  t: float, frame_id: str) -> Image:
    """``~/debug/matches``: query (left) and keyframe (right) side by side, RGB, with a line per inlier."""
    import cv2

    q, k = np.ascontiguousarray(query[..., :3]), np.ascontiguousarray(keyframe[..., :3])
    h = max(q.shape[0], k.shape[0])
    canvas = np.zeros((h, q.shape[1] + k.shape[1], 3), np.uint8)
    canvas[:q.shape[0], :q.shape[1]] = q
    canvas[:k.shape[0], q.shape[1]:] = k
    off = np.array([q.shape[1], 0.0])
    for a, b in zip(np.asarray(uv_query, float).reshape(-1, 2), np.asarray(uv_keyframe, float).reshape(-1, 2)):
        pa, pb = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b + off)
        cv2.line(canvas, pa, pb, (0, 255, 0), 1, cv2.LINE_AA)
        cv2.circle(canvas, pa, 2, (255, 0, 0), -1)
        cv2.circle(canvas, pb, 2, (255, 0, 0), -1)
    return image_msg(canvas, t, frame_id)


def _point(xyz) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def match_markers(stamp: float, frame_id: str, edges: Iterable[tuple[np.ndarray, np.ndarray]],
                  candidates: Iterable[Candidate] = (), ns: str = "place_match") -> MarkerArray:
    """A ``LINE_LIST`` of query→match edges (green) and spheres at the candidates (orange, rank order)."""
    h = header(stamp, frame_id)
    lines = Marker(header=h, ns=f"{ns}/edges", id=0, type=Marker.LINE_LIST, action=Marker.ADD)
    lines.scale.x = 0.3
    lines.color = ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)
    lines.pose.orientation.w = 1.0
    for a, b in edges:
        lines.points += [_point(a), _point(b)]
    spheres = Marker(header=h, ns=f"{ns}/candidates", id=1, type=Marker.SPHERE_LIST, action=Marker.ADD)
    spheres.scale.x = spheres.scale.y = spheres.scale.z = 1.5
    spheres.color = ColorRGBA(r=1.0, g=0.5, b=0.0, a=0.9)
    spheres.pose.orientation.w = 1.0
    spheres.points = [_point(c.pose[:3]) for c in candidates]
    return MarkerArray(markers=[m for m in (lines, spheres) if m.points])


def keyframe_markers(positions: np.ndarray, frame_id: str, stamp: float = 0.0) -> MarkerArray:
    """All map keyframes as one blue ``SPHERE_LIST``."""
    m = Marker(header=header(stamp, frame_id), ns="keyframes", id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
    m.scale.x = m.scale.y = m.scale.z = 0.8
    m.color = ColorRGBA(r=0.2, g=0.4, b=1.0, a=0.8)
    m.pose.orientation.w = 1.0
    m.points = [_point(p) for p in np.asarray(positions)]
    return MarkerArray(markers=[m])
