"""``replay_recorder``: every output of a node under replay with its receive time, and the same as a bag.

The recorder subscribes (reliable, deep queue) to the outputs of both nodes, keeps each message with its
receive time (monotonic s), follows the node's own ``/diagnostics`` status, and writes what it kept to an
mcap rosbag2 folder (:meth:`Recorder.write_bag`) that Foxglove opens and ``ros2 bag play`` plays, logged at
the sim time (``/clock``) of its arrival.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rclpy.serialization import serialize_message
from std_msgs.msg import Float64MultiArray
from visualization_msgs.msg import MarkerArray

from ..data.msg_codec import sec_to_ns
from .messages import type_name
from .qos import RECORD_QOS

#: The nodes' outputs (relative names resolve in the node's namespace).
OUTPUTS = {"place_match": PoseWithCovarianceStamped, "place_candidates": PoseArray,
           "place_candidates/scores": Float64MultiArray, "place_candidates/inliers": Float64MultiArray,
           "loop_closure": Float64MultiArray, "loop_closure/transform": Float64MultiArray,
           "markers": MarkerArray, "/diagnostics": DiagnosticArray}


class Recorder:
    """``replay_recorder`` in ``namespace``: ``messages[topic]`` = ``[(receive time, message), ...]``;
    ``status`` = the latest ``DiagnosticStatus`` of the node ``node_name`` (``statuses`` counts them);
    ``last_query`` = the newest ``t_query`` answered on ``place_candidates/scores``."""

    def __init__(self, context, namespace: str, node_name: str) -> None:
        self.node = rclpy.create_node("replay_recorder", namespace=namespace, context=context)
        self.node_fqn = f"{namespace.rstrip('/')}/{node_name}"
        self.messages: dict[str, list[tuple[float, Any]]] = {topic: [] for topic in OUTPUTS}
        self.subs = {topic: self.node.create_subscription(msg_type, topic, self._recorder(topic), RECORD_QOS)
                     for topic, msg_type in OUTPUTS.items()}
        self.resolved = {topic: sub.topic_name for topic, sub in self.subs.items()}  # e.g. /<namespace>/markers
        self.status = None
        self.statuses = 0
        self.last_query = -math.inf

    def _recorder(self, topic: str):
        store = self.messages[topic]

        def record(msg) -> None:
            store.append((time.monotonic(), msg))
            if topic == "/diagnostics":
                for status in msg.status:
                    if status.hardware_id == self.node_fqn:
                        self.status, self.statuses = status, self.statuses + 1
            elif topic == "place_candidates/scores" and msg.data:
                self.last_query = max(self.last_query, msg.data[0])
        return record

    def node_values(self) -> dict[str, Any]:
        """The node's last diagnostics values (numbers as floats)."""
        out: dict[str, Any] = {}
        for kv in self.status.values if self.status is not None else []:
            try:
                out[kv.key] = float(kv.value)
            except ValueError:
                out[kv.key] = kv.value
        return out

    def clear(self) -> None:
        """Forget the messages recorded so far (the node's status is kept)."""
        for messages in self.messages.values():
            messages.clear()

    def write_bag(self, path: Path, clock: Callable[[np.ndarray], np.ndarray]) -> dict[str, int]:
        """Write every recorded message to the mcap bag folder ``path`` under its resolved topic name, logged
        at ``clock(receive times)`` (sim time s; the receive time itself where that is NaN). Returns the
        message count per topic written."""
        entries = []
        for topic, kept in self.messages.items():
            if not kept:
                continue
            received = np.array([t for t, _ in kept])
            stamps = clock(received)
            stamps = np.where(np.isfinite(stamps), stamps, received)
            name = self.resolved[topic]
            entries += [(stamp, name, msg) for stamp, (_, msg) in zip(stamps.tolist(), kept)]
        write_bag(path, entries)
        counts: dict[str, int] = {}
        for _, name, _ in entries:
            counts[name] = counts.get(name, 0) + 1
        return counts


def write_bag(path: Path, entries: Iterable[tuple[float, str, Any]]) -> Path:
    """A rosbag2 folder (mcap storage, message definitions embedded) at ``path`` holding ``entries``
    (``(log time s, topic, rclpy message)``, written in log-time order). A bag already at ``path`` (a folder
    with ``metadata.yaml``) is replaced; anything else there is refused."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..data.rosbag_io import BAG_VERSION, ros2_typestore

    path = Path(path)
    if path.exists():
        if not (path / "metadata.yaml").is_file():
            raise FileExistsError(f"{path} exists and is no bag: not replaced")
        shutil.rmtree(path)
    typestore = ros2_typestore()
    ordered: Sequence = sorted(entries, key=lambda e: e[0])
    with Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        conns: dict[str, Any] = {}
        for t, topic, msg in ordered:
            conn = conns.get(topic)
            if conn is None:
                conn = conns[topic] = writer.add_connection(topic, type_name(type(msg)), typestore=typestore)
            writer.write(conn, sec_to_ns(t), serialize_message(msg))
    return path
