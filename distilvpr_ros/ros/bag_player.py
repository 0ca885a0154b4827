"""``bag_player``: a bag's messages published as recorded, as ``ros2 bag play --clock`` does.

Each message is forwarded as its serialized bytes (stamps and contents untouched: the node decodes what a
robot's driver would have sent), preceded by ``/clock`` (``rosgraph_msgs/Clock``) at its play time, and
paced at ``rate`` x the bag's time (pauses longer than ``max_gap_s`` shortened) or evenly at ``hz``.

Reading runs in its own thread (:func:`read_bag`) ahead of the player into a bounded queue, so memory stays
bounded for any bag length and reading never delays publishing. The player (:meth:`BagPlayer.play`) runs
in another thread; its node is spun by the caller's executor. ``/clock`` is an absolute name: run one
player per ROS domain.
"""

from __future__ import annotations

import heapq
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from ..data.msg_codec import ns_to_sec, stamp_to_sec
from .messages import stamp_from_sec

try:  # rosgraph_msgs comes with rclpy (its TimeSource subscribes to /clock)
    from rosgraph_msgs.msg import Clock
except ImportError:  # pragma: no cover - then nodes run on wall time and no /clock is published
    Clock = None

#: rclpy message class of each bag message type a node subscribes to.
MESSAGE_CLASSES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
                   "sensor_msgs/msg/PointCloud2": PointCloud2, "nav_msgs/msg/Odometry": Odometry}
CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"


class BagMessage(NamedTuple):
    """One message to play: the node topic it goes to, its play time and header stamp (s), its bytes."""

    topic: str
    due: float  # bag (log) time, minus the lead of its type: when it is played and what /clock says then
    stamp: float  # header stamp
    raw: bytes


def absolute(name: str) -> str:
    """A topic name as bags store it (leading ``/``)."""
    return name if name.startswith("/") else "/" + name


def open_reader(bag: Path):
    """A ``rosbags`` reader of ``bag`` (any format it reads; definitions from the ROS 2 typestore)."""
    from rosbags.highlevel import AnyReader

    from ..data.rosbag_io import ros2_typestore

    return AnyReader([Path(bag)], default_typestore=ros2_typestore())


def bag_topics(bag: Path) -> dict[str, str]:
    """``topic → message type`` of every topic in ``bag``."""
    with open_reader(bag) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def first_message(bag: Path, topic: str) -> tuple[float, bytes]:
    """Header stamp (s) and serialized bytes of the first message on ``topic``; LookupError when none."""
    with open_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns):
            return stamp_to_sec(reader.deserialize(raw, conn.msgtype).header.stamp), bytes(raw)
    raise LookupError(f"{bag}: no message on {topic}")


def put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into ``out``, waiting while it is full; False when ``stop`` was set meanwhile."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def read_bag(bag: Path, topics: dict[str, tuple[str, str]], out: queue.Queue, stop: threading.Event,
             errors: list, odom_lead_s: float = 0.0, max_messages: int | None = None,
             count_odometry: bool = True) -> None:
    """The messages of ``bag`` on ``topics`` (``bag topic → (node topic, message type)``) into ``out`` as
    :class:`BagMessage`, then ``None``, in play-time order: the bag time, minus ``odom_lead_s`` for odometry
    (sent that much earlier). At most ``max_messages`` (odometry not counted unless ``count_odometry``). An error
    ends the stream and is kept in ``errors``."""
    ahead: list[tuple[float, int, BagMessage, bool]] = []  # heap on play time: messages not yet due (odometry?)
    sent = 0

    def flush(until: float) -> bool:
        nonlocal sent
        while ahead and ahead[0][0] <= until and (max_messages is None or sent < max_messages):
            _, _, message, odometry = heapq.heappop(ahead)
            if not put(out, message, stop):
                return False
            sent += count_odometry or not odometry
        return max_messages is None or sent < max_messages

    try:
        with open_reader(bag) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            for k, (conn, t_ns, raw) in enumerate(reader.messages(connections=conns)):
                node_topic, msgtype = topics[conn.topic]
                t = ns_to_sec(t_ns)
                due = t - odom_lead_s if msgtype == ODOMETRY_TYPE else t
                stamp = stamp_to_sec(reader.deserialize(raw, msgtype).header.stamp)
                heapq.heappush(ahead, (due, k, BagMessage(node_topic, due, stamp, bytes(raw)),
                                       msgtype == ODOMETRY_TYPE))
                if not flush(t - odom_lead_s):  # nothing read later can play before these
                    return
            flush(math.inf)
    except Exception as e:
        errors.append(e)
    finally:
        put(out, None, stop)


class BagPlayer:
    """``bag_player``: publishes :class:`BagMessage` items (or re-stamped messages, :meth:`publish`), each
    preceded by ``/clock``. Keeps per topic the header stamps and publish times (monotonic s) of what it
    played, and every ``/clock`` it published with its publish time (:meth:`clock_at`)."""

    def __init__(self, context, namespace: str, topics: dict[str, type], qos: QoSProfile) -> None:
        self.node = rclpy.create_node("bag_player", namespace=namespace, context=context)
        self.pubs = {topic: self.node.create_publisher(msg_type, topic, qos) for topic, msg_type in topics.items()}
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10) if Clock is not None else None
        self.sent = {topic: 0 for topic in topics}
        self.sent_stamps: dict[str, list[float]] = {topic: [] for topic in topics}
        self.sent_wall: dict[str, list[float]] = {topic: [] for topic in topics}
        self._clock_wall: list[float] = []
        self._clock: list[float] = []
        self.hold_timeouts = 0  # held messages sent after hold_timeout_s without hold() turning true
        self.error: BaseException | None = None

    def publish(self, topic: str, clock: float, msg) -> float:
        """Publish ``/clock`` at ``clock`` (s), then ``msg`` (serialized bytes or a message) on ``topic``;
        returns the message's publish time (monotonic s)."""
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp_from_sec(clock)))
        t = time.monotonic()
        self._clock_wall.append(t)
        self._clock.append(clock)
        self.pubs[topic].publish(msg)
        return t

    def play(self, messages: queue.Queue, rate: float = 1.0, max_gap_s: float = math.inf, hz: float | None = None,
             hold: Callable[[int], bool] | None = None, hold_topics: Sequence[str] = (),
             hold_timeout_s: float = 10.0, hz_topics: Sequence[str] | None = None) -> None:
        """Publish the :class:`BagMessage` items of ``messages`` (``None`` ends) at ``rate`` x bag time, pauses
        longer than ``max_gap_s`` (bag time) shortened to it, or evenly at ``hz`` when given (``hz_topics``: only
        messages on these topics are paced, the others go out at once in their order; None: every message). With
        ``hold``, the k-th message on ``hold_topics`` waits (at most ``hold_timeout_s``) until ``hold(k)`` is true; the
        schedule moves on by the time waited. Errors are kept in ``error`` (this runs in a thread)."""
        try:
            start, played, previous = time.monotonic(), 0.0, None
            held = paced = 0
            for topic, due, stamp, raw in iter(messages.get, None):
                if hz:
                    if hz_topics is None or topic in hz_topics:
                        played = paced / hz
                        paced += 1
                else:
                    if previous is not None:
                        played += min(max(due - previous, 0.0), max_gap_s) / rate
                    previous = due
                time.sleep(max(0.0, start + played - time.monotonic()))
                if hold is not None and topic in hold_topics:
                    waited = time.monotonic()
                    while not hold(held):
                        if time.monotonic() - waited > hold_timeout_s:
                            self.hold_timeouts += 1
                            break
                        time.sleep(0.005)
                    start += time.monotonic() - waited
                    held += 1
                self.sent_wall[topic].append(self.publish(topic, due, raw))
                self.sent_stamps[topic].append(stamp)
                self.sent[topic] += 1
        except BaseException as e:  # reported by the main thread
            self.error = e

    def clock_at(self, wall: Sequence[float]) -> np.ndarray:
        """The ``/clock`` (s) this player had published last at each monotonic time in ``wall`` (its first
        ``/clock`` before that; NaN when it published none): the sim time a subscriber saw then."""
        wall = np.asarray(wall, dtype=np.float64)
        if not self._clock:
            return np.full(wall.shape, np.nan)
        i = np.searchsorted(np.asarray(self._clock_wall), wall, side="right") - 1
        return np.asarray(self._clock)[np.maximum(i, 0)]
