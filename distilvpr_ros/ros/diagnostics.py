"""What a node reports about itself: ``/diagnostics`` statuses, throttled problem reports, transport losses.

(Rate and latency percentiles come from the ROS-free :class:`~distilvpr_ros.ros.latency.LatencyWindow`.)
"""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from .qos import OUTPUT_QOS

#: Diagnostic levels as ints (``DiagnosticStatus`` holds them as one byte).
OK, WARN, ERROR = (int.from_bytes(lv, "little") for lv in (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                                                           DiagnosticStatus.ERROR))


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


class InputWatch:
    """Silence and transport loss on one input topic, so diagnostics can say that frames are being lost.

    Large best-effort frames can be lost in transport for good (none arrives), so counting sequence gaps alone
    never notices: :meth:`problem` also reports a topic that has publishers but has delivered nothing for
    ``timeout_s`` (since the watch started or the last message), and a transport loss rate above
    ``max_loss`` over the messages seen since the previous check.
    """

    def __init__(self, topic: str, timeout_s: float, max_loss: float) -> None:
        self.topic, self.timeout_s, self.max_loss = topic, timeout_s, max_loss
        self.losses = TransportLosses()
        self.received = 0
        self._last = time.monotonic()  # the start counts as the last arrival
        self._checked = (0, 0)  # (received, lost) at the previous check

    def update(self, info) -> None:
        self.received += 1
        self._last = time.monotonic()
        self.losses.update(info)

    def problem(self, publishers: int, now: float | None = None) -> str:
        """'' when the topic is fine, else a WARN message."""
        now = time.monotonic() if now is None else now
        silent = now - self._last
        if publishers > 0 and self.timeout_s > 0 and silent > self.timeout_s:
            return (f"no message on {self.topic} for {silent:.1f} s although {publishers} publisher(s) exist: "
                    "lost in transport? (large best-effort frames: use the shipped Fast DDS profile or reliable QoS)")
        received, lost = self.received - self._checked[0], self.losses.lost - self._checked[1]
        self._checked = (self.received, self.losses.lost)
        if lost and lost / (received + lost) > self.max_loss:
            return (f"{self.topic}: {lost} of {received + lost} messages ({100 * lost / (received + lost):.0f} %) "
                    f"lost in transport since the last status (max_transport_loss {self.max_loss:g})")
        return ""


class Diagnostics:
    """One ``DiagnosticStatus`` (named ``<node name>: <what>``) published on ``/diagnostics``."""

    def __init__(self, node: Node, what: str) -> None:
        self.node = node
        self.name = f"{node.get_name()}: {what}"
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self._problems_seen = 0

    def publish_status(self, fatal: str, problems: ProblemLog, ok_message: str, values: dict,
                       warning: str = "") -> DiagnosticStatus:
        """ERROR while ``fatal`` (the node is idle), WARN+ when ``problems`` grew since the last status (the
        latest one), WARN with ``warning`` (e.g. an input gone silent), else OK with ``ok_message``."""
        if fatal:
            level, message = ERROR, f"idle: {fatal}"
        elif problems.total > self._problems_seen:
            level, message = max(WARN, problems.last_level), problems.last
        elif warning:
            level, message = WARN, warning
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
