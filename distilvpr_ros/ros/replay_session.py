"""One node under replay: the node in its own process, and in this one a bag player and a recorder spun by one
executor. Shared by :mod:`~distilvpr_ros.ros.replay_localization` and :mod:`~distilvpr_ros.ros.replay_mapping`.

Publish and receive times come from one monotonic clock, so a receive time minus the publish time of the
input it answers is the end-to-end latency (transport in, decoding, inference, matching, transport out).
The node runs with ``use_sim_time``: the player's ``/clock`` is its time. Its resident memory is sampled
while :attr:`ReplaySession.sampling`. ``/clock`` and ``/diagnostics`` are absolute names: run one replay per
ROS domain.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor

from ..pipeline.config import NodeConfig
from .bag_player import CAMERA_TYPES, BagPlayer, Clock, read_bag
from .diagnostics import ERROR, OK
from .node_process import NodeProcess, ReplayError, write_params
from .qos import sensor_qos
from .recorder import Recorder

RSS_PERIOD_S = 0.2


class ReplaySession:
    """The node of ``module`` (named ``node_name``, called ``what`` in messages) with ``cfg`` in ``namespace``;
    a :class:`BagPlayer` publishing ``inputs`` (node topic → rclpy class) and a :class:`Recorder`. Its
    parameters and log are written to ``out_dir/<params_name>`` and ``out_dir/<log_name>``. Call
    :meth:`wait_ready`, :meth:`play`, then :meth:`close` (in a ``finally``)."""

    def __init__(self, cfg: NodeConfig, out_dir: Path, module: str, node_name: str, what: str,
                 inputs: dict[str, type], namespace: str, params_name: str, log_name: str) -> None:
        self.cfg, self.what = cfg, what
        params = write_params(cfg, out_dir / params_name, use_sim_time=Clock is not None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.player = BagPlayer(self.context, namespace, inputs, sensor_qos(cfg.qos))
        self.recorder = Recorder(self.context, namespace, node_name)
        for own in (self.player.node, self.recorder.node):
            self.executor.add_node(own)
        self.node = NodeProcess(module, params, namespace, out_dir / log_name)
        self.rss: list[float] = []  # the node's resident memory (MB), sampled while `sampling`
        self.sampling = False
        self._next_rss = 0.0

    def spin_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Spin until ``condition()`` (True) or ``timeout`` s (False); ReplayError if the node dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if self.sampling and time.monotonic() >= self._next_rss:
                self.rss.append(self.node.rss_mb())
                self._next_rss = time.monotonic() + RSS_PERIOD_S
            if condition():
                return True
            if not self.node.alive():
                raise ReplayError(f"{self.what} exited ({self.node.proc.returncode}):\n{self.node.log_tail()}")
        return False

    def wait_ready(self, timeout: float, matched: Callable[[], bool] = lambda: True) -> None:
        """Until the node reports OK, subscribes to every input and ``matched()``; ReplayError on its ERROR."""
        def ready() -> bool:
            status = self.recorder.status
            if status is not None and status.level == bytes([ERROR]):
                raise ReplayError(f"{self.what}: {status.message} (log: {self.node.log_path})")
            return (status is not None and status.level == bytes([OK])
                    and all(pub.get_subscription_count() for pub in self.player.pubs.values()) and matched())

        if not self.spin_until(ready, timeout):
            raise ReplayError(f"{self.what} not ready after {timeout:g} s:\n{self.node.log_tail()}")

    def wait_diagnostics(self) -> None:
        """Until the node's next /diagnostics arrives (its counters are current)."""
        seen = self.recorder.statuses
        self.spin_until(lambda: self.recorder.statuses > seen, 2 * self.cfg.diagnostics.period_s + 1.0)

    def play(self, bag: Path, topics: dict[str, tuple[str, str]], rate: float = 1.0, max_gap_s: float = math.inf,
             hz: float | None = None, odom_lead_s: float = 0.0, max_messages: int | None = None,
             prefetch: int = 32, hold: Callable[[int], bool] | None = None, hold_topics: Sequence[str] = (),
             hz_topics: Sequence[str] | None = None, count_odometry: bool = True,
             progress: bool = False) -> None:
        """Play ``topics`` of ``bag`` (``bag topic → (node topic, type)``; reader thread → player thread, see
        :mod:`~distilvpr_ros.ros.bag_player` for the other options) while spinning, sampling the node's
        memory; with ``progress``, a bar of the camera frames sent. Raises what the threads raised."""
        from tqdm import tqdm

        messages: queue.Queue = queue.Queue(maxsize=prefetch)
        errors: list[BaseException] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_bag, args=(bag, topics, messages, stop, errors, odom_lead_s,
                                                         max_messages, count_odometry), daemon=True)
        playing = threading.Thread(target=self.player.play, args=(messages, rate, max_gap_s, hz),
                                   kwargs=dict(hold=hold, hold_topics=hold_topics, hz_topics=hz_topics), daemon=True)
        cameras = [node_topic for node_topic, msgtype in topics.values() if msgtype in CAMERA_TYPES]
        bar = tqdm(desc=f"{self.what} <- {Path(bag).name}", unit="frame", disable=not progress, leave=False)

        def done() -> bool:
            bar.update(sum(self.player.sent[t] for t in cameras) - bar.n)
            return not playing.is_alive()

        reader.start()
        playing.start()
        self.sampling = True
        try:
            self.spin_until(done, math.inf)
        finally:
            stop.set()
            bar.close()
        for error in (self.player.error, *errors):
            if error is not None:
                raise error

    def write_bag(self, path: Path) -> dict[str, int]:
        """What the recorder kept, as an mcap bag at ``path`` logged at the player's ``/clock``."""
        return self.recorder.write_bag(path, self.player.clock_at)

    def close(self) -> None:
        """Stop the node (SIGINT) and this process's nodes."""
        self.node.stop()
        for own in (self.player.node, self.recorder.node):
            self.executor.remove_node(own)
            own.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)
