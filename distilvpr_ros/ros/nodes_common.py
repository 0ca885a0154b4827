"""What both nodes share: QoS profiles, diagnostics, throttled problem reports, output messages, ``main``.

The nodes stay thin: they convert messages here or in ``ros/conversions.py`` / ``data/msg_codec.py`` and
call :mod:`distilvpr_ros.pipeline` for everything else.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovarianceStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from std_msgs.msg import ColorRGBA, Float64MultiArray, MultiArrayDimension, MultiArrayLayout
from visualization_msgs.msg import Marker, MarkerArray

from ..data import msg_codec
from ..mapping.matcher import Candidate, MatchResult
from ..pipeline.config import QosConfig
from .conversions import header, stamp_from_sec  # noqa: F401  (re-exported for the nodes)
from .params import ParamError

#: Diagnostic levels as ints (``DiagnosticStatus`` holds them as one byte).
OK, WARN, ERROR = (int.from_bytes(lv, "little") for lv in (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                                                           DiagnosticStatus.ERROR))
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}

#: Outputs: reliable, keep-last 10 (reliable publishers also serve best-effort subscribers like LIO-SAM).
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
#: Keyframe markers: latched so RViz gets them when it starts after the node.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def sensor_qos(cfg: QosConfig) -> QoSProfile:
    """``qos_profile_sensor_data`` (best-effort, volatile) with the configured reliability and depth."""
    reliability = ReliabilityPolicy.RELIABLE if cfg.sensor_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.sensor_depth, reliability=reliability,
                      durability=qos_profile_sensor_data.durability)


def msg_stamp(msg) -> float:
    """Header stamp of a message in float seconds."""
    return msg_codec.stamp_to_sec(msg.header.stamp)


def time_to_sec(t: Time) -> float:
    return msg_codec.stamp_to_sec(t)


# --------------------------------------------------------------------------------------------------
# Problems and diagnostics
# --------------------------------------------------------------------------------------------------


class ProblemLog:
    """Throttled logging of recurring input problems, keyed by kind, with counts for diagnostics.

    The first occurrence of a kind is logged at once, later ones at most every ``throttle_s`` seconds
    (with the number suppressed meanwhile). ``last`` keeps the most recent message for diagnostics.
    """

    def __init__(self, logger, throttle_s: float = 5.0) -> None:
        self.logger, self.throttle_s = logger, throttle_s
        self.counts: dict[str, int] = {}
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.last = ""
        self.last_level = OK

    def report(self, kind: str, message: str, level: int = WARN) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last, self.last_level = message, level
        now = time.monotonic()
        if kind in self._last_log and now - self._last_log[kind] < self.throttle_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        (self.logger.error if level == ERROR else self.logger.warning)(f"{message}{suffix}")
        self._last_log[kind] = now

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class TransportLosses:
    """Messages lost between a publisher and this subscription (e.g. overwritten in a best-effort DDS
    reader queue before the callback ran), from gaps in each publisher's ``publication_sequence_number``.

    ``update(message_info)`` takes the dict rclpy passes as a callback's second argument. Per publisher
    (by GID) a jump from sequence number a to b > a + 1 counts b − a − 1 losses; a number that goes
    back (publisher restarted) only resets. Middlewares without sequence numbers count nothing.
    """

    def __init__(self) -> None:
        self.lost = 0
        self._last: dict[bytes, int] = {}

    def update(self, info) -> None:
        seq = info.get("publication_sequence_number") if info else None
        if not seq:
            return
        gid = bytes((info.get("publisher_gid") or {}).get("data", b""))
        last = self._last.get(gid)
        if last is not None and seq > last + 1:
            self.lost += seq - last - 1
        self._last[gid] = seq


class Diagnostics:
    """One ``DiagnosticStatus`` (named ``<node name>: <what>``) published on ``/diagnostics``."""

    def __init__(self, node: Node, what: str) -> None:
        self.node = node
        self.name = f"{node.get_name()}: {what}"
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self._problems_seen = 0

    def publish_status(self, fatal: str, problems: ProblemLog, ok_message: str, values: dict) -> DiagnosticStatus:
        """ERROR while ``fatal`` (the node is idle), WARN+ when ``problems`` grew since the last status,
        else OK with ``ok_message``."""
        if fatal:
            level, message = ERROR, f"idle: {fatal}"
        elif problems.total > self._problems_seen:
            level, message = max(WARN, problems.last_level), problems.last
        else:
            level, message = OK, ok_message
        self._problems_seen = problems.total
        return self.publish(level, message, values)

    def publish(self, level: int, message: str, values: dict) -> DiagnosticStatus:
        status = DiagnosticStatus(level=bytes([level]), name=self.name, message=message,
                                  hardware_id=self.node.get_fully_qualified_name(),
                                  values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(arr)
        return status


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return str(v)


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


# --------------------------------------------------------------------------------------------------
# main()
# --------------------------------------------------------------------------------------------------


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """The standard main(): ``rclpy.init`` → spin → on Ctrl-C / SIGTERM / external shutdown leave the spin,
    call the node's ``shutdown()`` (if it has one: e.g. save the map) → ``destroy_node`` →
    ``rclpy.try_shutdown``. rclpy's own SIGINT and SIGTERM handlers are installed by ``rclpy.init``.
    Returns the process exit code (2 for invalid parameters)."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParamError as e:
        print(f"[ERROR] {e}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            finish = getattr(node, "shutdown", None)
            if finish is not None:
                finish()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
