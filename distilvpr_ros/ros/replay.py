"""``distilvpr replay``: a bag played into the localisation node over DDS, its outputs recorded and scored.

What runs where (chosen so the numbers are the ones a robot would see)
    * The localisation node runs in its own process, started as deployed::

          python -m distilvpr_ros.ros.localization_node --ros-args --params-file <out>/localization_params.yaml \\
              -r __ns:=/distilvpr_replay

      with ``use_sim_time`` true. Its inference never waits for the GIL of the player or the recorder.
    * This process holds two rclpy nodes on one executor. ``replay_player`` publishes the bag's camera
      images (sensor QoS, header stamp = bag stamp), each preceded by ``/clock`` (``rosgraph_msgs/Clock``
      at that stamp), paced at real time × ``rate`` from the bag stamps, or evenly at ``hz``.
      ``replay_recorder`` subscribes to every output of the node and keeps each message with its receive
      time. Publish and receive times come from one monotonic clock, so receive − publish is the end-to-end
      latency: transport in, decoding, inference, matching, transport out.
    * A prefetch thread decodes bag images ahead of the player into a bounded queue: memory stays bounded
      for any bag length, and decoding does not delay publishing.

Before the timed playback the first image is sent ``warmup`` times with stamps before the bag's first (the
first inferences of a fresh model are slow; the robot "stood at the start"); those are not scored. After the
last image the recorder waits for the node to drain, reads its final ``/diagnostics`` (its drop counter) and
stops it with SIGINT. The node's resident memory is sampled during playback; its diagnostics counters
(frames, processed, drops, ...) are reported for the timed playback only.

Where frames are dropped when the node cannot keep up: mostly in its DDS reader (best-effort, keep-last
``qos.sensor_depth``), which the node never sees (``published - node frames``), and in its one-frame slot
(the node's ``drops``). Both are bounded; the recorder counts every published frame left unanswered.
``/clock`` and ``/diagnostics`` are absolute names: run one replay per ROS domain.

Scoring (:mod:`distilvpr_ros.evaluation.replay_metrics`) uses the bag's odometry as ground truth.

Mapping through the mapping node (:func:`run_mapping`, what ``distilvpr demo`` builds its map with) reuses
the same pieces: the mapping node in its own process (``python -m distilvpr_ros.ros.mapping_node``), and a
``bag_player`` that publishes the bag's camera, LiDAR and odometry messages as recorded (their serialized
bytes, stamps untouched, as ``ros2 bag play`` does) with ``/clock``, paced at ``rate`` x the bag's time
(pauses longer than ``max_gap_s`` shortened). After the last message it waits until the node has paired
every camera frame (or its counters stop moving) and stops it with SIGINT: the node then processes what is
pending and saves the map.

Two options keep the map complete. The mapping node turns a camera+LiDAR pair into a keyframe as soon as it
is paired and skips it when it has not yet received odometry within ``keyframes.odom_tolerance_s`` of its
stamp. With odometry as sparse as the synthetic bags' (twice the frame rate, stamped like the camera) that
happens when an odometry message is taken after its pair, and whenever the node falls behind: it takes one
message per topic per spin, so an odometry backlog (twice as many messages) drains behind the camera's.
``odom_lead_s`` sends odometry that much bag time early (as on a robot whose odometry arrives before the
slower camera and LiDAR drivers' messages of the same instant); ``max_unpaired`` holds each camera frame
until the node's ``/diagnostics`` say it has paired all but that many of the frames before it, so the
playback runs as fast as the node can take it, at most ``rate``.
"""

from __future__ import annotations

import heapq
import math
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray
from visualization_msgs.msg import MarkerArray

from ..data.errors import DataError
from ..data.geometry import interpolate_poses
from ..evaluation.replay_metrics import Recording, positives, score_replay, write_report
from ..mapping.database import PlaceDatabase
from ..pipeline.config import NodeConfig, load_node_config
from ..pipeline.offline import open_bag_sequence
from .localization_node import NODE_NAME
from .mapping_node import NODE_NAME as MAPPING_NODE_NAME
from .diagnostics import ERROR, OK
from .messages import image_msg, msg_stamp, stamp_from_sec
from .params import flatten
from .qos import sensor_qos

try:  # rosgraph_msgs comes with rclpy (its TimeSource subscribes to /clock)
    from rosgraph_msgs.msg import Clock
except ImportError:  # pragma: no cover - then the node runs on wall time and no /clock is published
    Clock = None

NAMESPACE = "/distilvpr_replay"
CAMERA_FRAME = "camera_optical"
WARMUP_LEAD_S = 100.0  # warm-up frames are stamped up to this long before the bag's first frame
WARMUP_SENDS = 1000  # at most this many warm-up sends (each waits up to 2 s for its answer)
RSS_PERIOD_S = 0.2
#: Cumulative counters of the node's diagnostics, reported for the timed playback only (warm-up removed).
NODE_COUNTERS = ("frames", "processed", "drops", "drops_transport", "drops_duplicate", "drops_out_of_order",
                 "input_errors", "accepted", "loop_closures")
RECORD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
OUTPUTS = {"place_match": PoseWithCovarianceStamped, "place_candidates": PoseArray,
           "place_candidates/scores": Float64MultiArray, "loop_closure": Float64MultiArray,
           "markers": MarkerArray, "/diagnostics": DiagnosticArray}


class ReplayError(RuntimeError):
    """The node did not start, reported an error or died; the message says why (and where its log is)."""


# --------------------------------------------------------------------------------------------------
# The two nodes of this process
# --------------------------------------------------------------------------------------------------


class Player:
    """``replay_player``: camera images with their bag stamps (and ``/clock``), sent from a thread."""

    def __init__(self, context, cfg: NodeConfig, namespace: str) -> None:
        self.node = rclpy.create_node("replay_player", namespace=namespace, context=context)
        self.image_pub = self.node.create_publisher(Image, cfg.topics.camera, sensor_qos(cfg.qos))
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10) if Clock is not None else None
        self.sent_stamps: list[float] = []
        self.sent_wall: list[float] = []
        self.error: BaseException | None = None

    def publish(self, stamp: float, msg: Image) -> float:
        """Publish ``/clock`` then the image; returns the image's publish time (monotonic s)."""
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp_from_sec(stamp)))
        t = time.monotonic()
        self.image_pub.publish(msg)
        return t

    def play(self, frames: queue.Queue, first_stamp: float, rate: float, hz: float | None) -> None:
        """Publish frames from ``frames`` (``(index, stamp, msg)``, ``None`` at the end) on schedule."""
        try:
            start = time.monotonic()
            for i, stamp, msg in iter(frames.get, None):
                due = start + (i / hz if hz else (stamp - first_stamp) / rate)
                time.sleep(max(0.0, due - time.monotonic()))
                self.sent_wall.append(self.publish(stamp, msg))
                self.sent_stamps.append(stamp)
        except BaseException as e:  # reported by the main thread
            self.error = e


class Recorder:
    """``replay_recorder``: every output of the node with its receive time (monotonic s)."""

    def __init__(self, context, namespace: str, node_name: str = NODE_NAME) -> None:
        self.node = rclpy.create_node("replay_recorder", namespace=namespace, context=context)
        self.node_fqn = f"{namespace.rstrip('/')}/{node_name}"
        self.messages: dict[str, list[tuple[float, Any]]] = {topic: [] for topic in OUTPUTS}
        self.subs = {topic: self.node.create_subscription(msg_type, topic, self._recorder(topic), RECORD_QOS)
                     for topic, msg_type in OUTPUTS.items()}
        self.status = None  # the node's latest DiagnosticStatus
        self.statuses = 0
        self.last_query = -math.inf  # newest t_query answered

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

    def recording(self, sent_stamps: list[float], sent_wall: list[float], rss: list[float]) -> Recording:
        m = self.messages
        return Recording(
            np.asarray(sent_stamps, dtype=np.float64), np.asarray(sent_wall, dtype=np.float64),
            scores=[(t, list(msg.data)) for t, msg in m["place_candidates/scores"]],
            matches=[(t, msg_stamp(msg), (msg.pose.pose.position.x, msg.pose.pose.position.y,
                                          msg.pose.pose.position.z)) for t, msg in m["place_match"]],
            loop_closures=[(t, msg.data[0], msg.data[1]) for t, msg in m["loop_closure"] if len(msg.data) == 2],
            node=self.node_values(), node_rss_mb=list(rss))


# --------------------------------------------------------------------------------------------------
# The localisation node's process
# --------------------------------------------------------------------------------------------------


def write_params(cfg: NodeConfig, path: Path, use_sim_time: bool) -> Path:
    """A ROS parameter file for the node (``/**`` matches it in any namespace)."""
    params = {k: 0 if v is None else v for k, v in flatten(cfg).items()}  # optional ints: 0 = unset
    params["use_sim_time"] = use_sim_time
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


class NodeProcess:
    """A node (``localization_node`` unless ``module`` says otherwise) as a child process, output in ``log``."""

    def __init__(self, params_file: Path, namespace: str, log: Path,
                 module: str = "distilvpr_ros.ros.localization_node") -> None:
        self.log_path = log
        self._log = open(log, "w")
        cmd = [sys.executable, "-m", module, "--ros-args",
               "--params-file", str(params_file), "-r", f"__ns:={namespace}"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def rss_mb(self) -> float:
        """Resident memory of the node (MB; NaN when unknown)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            return math.nan

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------------


def _put(frames: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` into ``frames``, waiting while it is full; False when ``stop`` was set meanwhile."""
    while not stop.is_set():
        try:
            frames.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _prefetch(seq, n: int, frames: queue.Queue, stop: threading.Event, errors: list) -> None:
    """Decode frames 0..n-1 into ``frames`` as ``(index, stamp, Image)``, then ``None``; unreadable frames
    are skipped with a message, any other error ends the stream and is kept in ``errors``."""
    try:
        for i in range(n):
            stamp = float(seq.timestamps[i])
            try:
                item = (i, stamp, image_msg(seq.image(i), stamp, CAMERA_FRAME))
            except DataError as e:
                print(f"replay: skipping frame {i}: {e}", file=sys.stderr)
                continue
            if not _put(frames, item, stop):
                return
    except Exception as e:
        errors.append(e)
    finally:
        _put(frames, None, stop)


class ReplaySession:
    """One replay: the node's process, the player and the recorder, and the executor spinning them.

    Used by :func:`record_replay` in this order: :meth:`wait_ready`, :meth:`warm_up`, :meth:`play`,
    :meth:`drain`, :meth:`close`.
    """

    def __init__(self, cfg: NodeConfig, out_dir: Path, namespace: str = NAMESPACE) -> None:
        self.cfg = cfg
        params = write_params(cfg, out_dir / "localization_params.yaml", use_sim_time=Clock is not None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.player = Player(self.context, cfg, namespace)
        self.recorder = Recorder(self.context, namespace)
        for own in (self.player.node, self.recorder.node):
            self.executor.add_node(own)
        self.node = NodeProcess(params, namespace, out_dir / "node.log")
        self.rss: list[float] = []  # the node's resident memory (MB), sampled while `sampling`
        self.sampling = False
        self._next_rss = 0.0

    def spin_until(self, condition, timeout: float) -> bool:
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
                raise ReplayError(f"localization node exited ({self.node.proc.returncode}):\n{self.node.log_tail()}")
        return False

    def wait_ready(self, timeout: float) -> None:
        """Until the node reports OK and both directions of DDS are matched; ReplayError on its ERROR."""
        player, recorder = self.player, self.recorder

        def ready() -> bool:
            status = recorder.status
            if status is not None and status.level == bytes([ERROR]):
                raise ReplayError(f"localization node: {status.message} (log: {self.node.log_path})")
            return (status is not None and status.level == bytes([OK]) and player.image_pub.get_subscription_count()
                    and recorder.subs["place_candidates/scores"].get_publisher_count() > 0)

        if not self.spin_until(ready, timeout):
            raise ReplayError(f"localization node not ready after {timeout:g} s:\n{self.node.log_tail()}")

    def warm_up(self, image: Image, t0: float, count: int, timeout: float) -> dict[str, Any]:
        """Send ``image`` until ``count`` sends were answered, stamped before ``t0`` (a new stamp each time, so a
        resend after a lost frame is no duplicate; never negative: rclpy refuses a negative /clock). Then
        forget what was recorded; returns the node's diagnostics values after the warm-up."""
        answered, deadline = 0, time.monotonic() + timeout
        lead = min(WARMUP_LEAD_S, t0)
        for stamp in t0 - lead + lead * np.arange(WARMUP_SENDS) / WARMUP_SENDS if lead > 1e-6 else []:
            if answered >= count:
                break
            if time.monotonic() > deadline:
                raise ReplayError(f"localization node never answered a camera frame:\n{self.node.log_tail()}")
            image.header.stamp = stamp_from_sec(stamp)
            self.player.publish(stamp, image)
            answered += self.spin_until(lambda: self.recorder.last_query >= stamp - 1e-6, 2.0)
        self.wait_diagnostics()
        for messages in self.recorder.messages.values():
            messages.clear()
        return self.recorder.node_values()

    def wait_diagnostics(self) -> None:
        """Until the node's next /diagnostics arrives (its counters are current)."""
        seen = self.recorder.statuses
        self.spin_until(lambda: self.recorder.statuses > seen, 2 * self.cfg.diagnostics.period_s + 1.0)

    def play(self, seq, n: int, rate: float, hz: float | None, prefetch: int) -> None:
        """Play frames 0..n-1 of ``seq`` (prefetch thread → player thread) while spinning the recorder."""
        frames: queue.Queue = queue.Queue(maxsize=prefetch)
        errors: list[BaseException] = []
        stop = threading.Event()
        reader = threading.Thread(target=_prefetch, args=(seq, n, frames, stop, errors), daemon=True)
        playing = threading.Thread(target=self.player.play, args=(frames, float(seq.timestamps[0]), rate, hz),
                                   daemon=True)
        reader.start()
        playing.start()
        self.sampling = True
        try:
            self.spin_until(lambda: not playing.is_alive(), math.inf)
        finally:
            stop.set()
        for error in (self.player.error, *errors):
            if error is not None:
                raise error

    def drain(self, timeout: float) -> None:
        """Until the last frame sent was answered (or ``timeout``), then the node's final diagnostics."""
        sent = self.player.sent_stamps
        last = sent[-1] if sent else -math.inf
        self.spin_until(lambda: self.recorder.last_query >= last - 1e-6, timeout)
        self.sampling = False
        self.wait_diagnostics()

    def close(self) -> None:
        self.node.stop()
        for own in (self.player.node, self.recorder.node):
            self.executor.remove_node(own)
            own.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


def record_replay(seq, cfg: NodeConfig, out_dir: Path, rate: float = 1.0, hz: float | None = None,
                  max_frames: int | None = None, warmup: int = 3, namespace: str = NAMESPACE,
                  startup_timeout_s: float = 120.0, drain_s: float = 3.0, prefetch: int = 32) -> Recording:
    """Start the node with ``cfg``, play the camera frames of ``seq`` (a ``BagSequence``) into it and record
    its outputs (module docstring). ``rate``: × real time; ``hz``: play evenly at this rate instead;
    ``max_frames``: only the first frames. The node's log is ``out_dir/node.log``."""
    if rate <= 0 or (hz is not None and hz <= 0):
        raise ValueError(f"rate and hz must be positive, got rate={rate}, hz={hz}")
    n = len(seq) if max_frames is None else min(len(seq), max_frames)
    session = ReplaySession(cfg, Path(out_dir), namespace)
    try:
        session.wait_ready(startup_timeout_s)
        t0 = float(seq.timestamps[0])
        before = session.warm_up(image_msg(seq.image(0), t0, CAMERA_FRAME), t0, warmup, startup_timeout_s)
        session.play(seq, n, rate, hz, prefetch)
        session.drain(drain_s)
        rec = session.recorder.recording(session.player.sent_stamps, session.player.sent_wall, session.rss)
    finally:
        session.close()
    rec.node.update({key: rec.node[key] - before.get(key, 0.0) for key in NODE_COUNTERS if key in rec.node})
    return rec


def replay_config(bag: Path, map_path: Path, model: Path, backend: str | None = None,
                  config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """The node config of a replay: ``config`` (YAML), then ``overrides`` (dotted keys), with the map and
    model set; the backend follows the model file (``.onnx`` → onnxruntime) unless given; ``map.run``
    defaults to the bag's name, so the temporal exclusion hides only keyframes of the replayed run itself."""
    backend = backend or ("onnxruntime" if Path(model).suffix == ".onnx" else "torch")
    model_key = "models.student_onnx" if backend == "onnxruntime" else "models.student_checkpoint"
    cfg = load_node_config(config, NODE_NAME, **{**(overrides or {}), "map.path": str(map_path),
                                                 "models.backend": backend, model_key: str(model)})
    if not cfg.map.run:
        cfg.map.run = Path(bag).name if Path(bag).is_dir() else Path(bag).stem
    return cfg


def run_replay(bag: str | Path, map_path: str | Path, model: str | Path, rate: float = 1.0,
               backend: str | None = None, config: str | Path | None = None, out_dir: str | Path | None = None,
               results_root: str | Path = "results", correct_m: float = 25.0, hz: float | None = None,
               max_frames: int | None = None, warmup: int = 3,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay ``bag`` into the localisation node with ``model`` against ``map_path``, score the recording
    against the bag's odometry and write the report into ``out_dir`` (default
    ``results_root/replay/<timestamp>`` + ``latest``). Returns the metrics (``replay_metrics.REPLAY_KEYS``
    and more). ``hz``, ``max_frames``: see :func:`record_replay`; ``overrides``: node config keys."""
    from ..utils.results import make_run_dir

    bag, map_path = Path(bag), Path(map_path)
    for what, path in (("bag", bag), ("map", map_path), ("model", Path(model))):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    cfg = replay_config(bag, map_path, Path(model), backend, config, overrides)
    db = PlaceDatabase.load(map_path)
    seq = open_bag_sequence(bag, cfg, cfg.map.run)
    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "replay")
    out.mkdir(parents=True, exist_ok=True)
    rec = record_replay(seq, cfg, out, rate=rate, hz=hz, max_frames=max_frames, warmup=warmup)

    query_xy = interpolate_poses(rec.sent_stamps, seq.timestamps, seq.poses)[:, :2, 3]
    truth = positives(query_xy, db.positions, correct_m, rec.sent_stamps, db.stamps, db.runs, cfg.map.run,
                      cfg.matcher.exclude_recent_s)
    metrics, details = score_replay(rec, query_xy, db.positions, truth, correct_m)
    metrics.update(bag=str(bag), map=str(map_path), map_size=len(db), model=str(model),
                   backend=cfg.models.backend, rate=rate, hz=hz, clock="/clock" if Clock is not None else "none",
                   out=str(out))
    write_report(out, metrics, details, query_xy, db.positions, rec.sent_stamps, title=f"replay {bag.name}")
    return metrics


# --------------------------------------------------------------------------------------------------
# Mapping: a bag played into the mapping node
# --------------------------------------------------------------------------------------------------

MAPPING_NAMESPACE = "/distilvpr_mapping_replay"
MAPPING_MODULE = "distilvpr_ros.ros.mapping_node"
#: rclpy message class of each bag message type the mapping node subscribes to.
MAPPING_INPUTS = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
                  "sensor_msgs/msg/PointCloud2": PointCloud2, "nav_msgs/msg/Odometry": Odometry}
CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"


def _absolute(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def mapping_topics(bag: Path, cfg: NodeConfig) -> dict[str, tuple[str, str]]:
    """``bag topic → (node topic, message type)`` of the mapping node's inputs found in ``bag``; DataError when
    the camera, LiDAR or odometry topic is missing."""
    from rosbags.highlevel import AnyReader

    from ..data.rosbag_io import ros2_typestore

    names = (cfg.topics.camera, cfg.topics.camera_compressed, cfg.topics.lidar, cfg.topics.odom)
    wanted = {_absolute(t): t for t in names if t}
    with AnyReader([bag], default_typestore=ros2_typestore()) as reader:
        present = {c.topic: c.msgtype for c in reader.connections}
    found = {topic: (wanted[topic], msgtype) for topic, msgtype in present.items()
             if topic in wanted and msgtype in MAPPING_INPUTS}
    types = {msgtype for _, msgtype in found.values()}
    for what, needed in (("camera", CAMERA_TYPES), ("LiDAR", ("sensor_msgs/msg/PointCloud2",)),
                         ("odometry", ("nav_msgs/msg/Odometry",))):
        if not types & set(needed):
            raise DataError(bag, f"no {what} topic for the mapping node (looked for {sorted(wanted)}; "
                                 f"bag has {sorted(present)})")
    return found


def _read_raw(bag: Path, topics: dict[str, tuple[str, str]], out: queue.Queue, stop: threading.Event,
              errors: list, odom_lead_s: float = 0.0) -> None:
    """The bag's messages on ``topics`` into ``out`` as ``(node topic, play time s, serialized bytes)``, then
    ``None``, in play-time order: the bag time, minus ``odom_lead_s`` for odometry (sent that much earlier).
    An error ends the stream and is kept in ``errors``."""
    from rosbags.highlevel import AnyReader

    from ..data.rosbag_io import ros2_typestore

    ahead: list[tuple[float, int, str, bytes]] = []  # heap on play time: messages read but not yet due
    try:
        with AnyReader([bag], default_typestore=ros2_typestore()) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            for k, (conn, t_ns, raw) in enumerate(reader.messages(connections=conns)):
                node_topic, msgtype = topics[conn.topic]
                t = t_ns * 1e-9
                heapq.heappush(ahead, (t - odom_lead_s if msgtype == ODOMETRY_TYPE else t, k, node_topic, bytes(raw)))
                while ahead and ahead[0][0] <= t - odom_lead_s:  # nothing read later can play before these
                    due, _, topic, data = heapq.heappop(ahead)
                    if not _put(out, (topic, due, data), stop):
                        return
            while ahead:
                due, _, topic, data = heapq.heappop(ahead)
                if not _put(out, (topic, due, data), stop):
                    return
    except Exception as e:
        errors.append(e)
    finally:
        _put(out, None, stop)


class BagPlayer:
    """``bag_player``: bag messages published as recorded (serialized bytes), each preceded by ``/clock``."""

    def __init__(self, context, namespace: str, topics: dict[str, type], qos: QoSProfile) -> None:
        self.node = rclpy.create_node("bag_player", namespace=namespace, context=context)
        self.pubs = {topic: self.node.create_publisher(msg_type, topic, qos) for topic, msg_type in topics.items()}
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10) if Clock is not None else None
        self.sent = {topic: 0 for topic in topics}
        self.hold_timeouts = 0  # held messages sent after hold_timeout_s without hold() turning true
        self.error: BaseException | None = None

    def play(self, messages: queue.Queue, rate: float, max_gap_s: float, hold: Callable[[int], bool] | None = None,
             hold_topics: Sequence[str] = (), hold_timeout_s: float = 10.0) -> None:
        """Publish ``(topic, stamp, bytes)`` items of ``messages`` (``None`` ends) at ``rate`` x bag time, pauses
        longer than ``max_gap_s`` (bag time) shortened to it. With ``hold``, the k-th message on
        ``hold_topics`` waits (at most ``hold_timeout_s``) until ``hold(k)`` is true; the schedule moves on by
        the time waited."""
        try:
            start, played, previous = time.monotonic(), 0.0, None
            held = 0
            for topic, stamp, raw in iter(messages.get, None):
                if previous is not None:
                    played += min(max(stamp - previous, 0.0), max_gap_s)
                previous = stamp
                time.sleep(max(0.0, start + played / rate - time.monotonic()))
                if hold is not None and topic in hold_topics:
                    waited = time.monotonic()
                    while not hold(held):
                        if time.monotonic() - waited > hold_timeout_s:
                            self.hold_timeouts += 1
                            break
                        time.sleep(0.005)
                    start += time.monotonic() - waited
                    held += 1
                if self.clock_pub is not None:
                    self.clock_pub.publish(Clock(clock=stamp_from_sec(stamp)))
                self.pubs[topic].publish(raw)
                self.sent[topic] += 1
        except BaseException as e:  # reported by the main thread
            self.error = e


class MappingSession(ReplaySession):
    """One bag played into the mapping node: its process, the bag player and the recorder (``/diagnostics``,
    ``loop_closure``). Used by :func:`record_mapping`: :meth:`wait_ready`, :meth:`play`, :meth:`drain`,
    :meth:`close` (SIGINT: the node saves its map)."""

    def __init__(self, cfg: NodeConfig, out_dir: Path, topics: dict[str, type],
                 namespace: str = MAPPING_NAMESPACE) -> None:
        self.cfg = cfg
        params = write_params(cfg, out_dir / "mapping_params.yaml", use_sim_time=Clock is not None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.player = BagPlayer(self.context, namespace, topics, sensor_qos(cfg.qos))
        self.recorder = Recorder(self.context, namespace, MAPPING_NODE_NAME)
        for own in (self.player.node, self.recorder.node):
            self.executor.add_node(own)
        self.node = NodeProcess(params, namespace, out_dir / "mapping_node.log", module=MAPPING_MODULE)
        self.rss: list[float] = []
        self.sampling = False
        self._next_rss = 0.0

    def wait_ready(self, timeout: float) -> None:
        """Until the node reports OK and subscribes to every input; ReplayError on its ERROR."""
        def ready() -> bool:
            status = self.recorder.status
            if status is not None and status.level == bytes([ERROR]):
                raise ReplayError(f"mapping node: {status.message} (log: {self.node.log_path})")
            return (status is not None and status.level == bytes([OK])
                    and all(pub.get_subscription_count() for pub in self.player.pubs.values()))

        if not self.spin_until(ready, timeout):
            raise ReplayError(f"mapping node not ready after {timeout:g} s:\n{self.node.log_tail()}")

    def play_bag(self, bag: Path, topics: dict[str, tuple[str, str]], rate: float, max_gap_s: float,
                 prefetch: int, progress: bool, odom_lead_s: float = 0.0, max_unpaired: int | None = None) -> None:
        """Play ``topics`` of ``bag`` (reader thread → player thread) while spinning, with a progress bar. With
        ``max_unpaired``, each camera frame waits until the node has paired all but that many of the frames
        sent before it (its /diagnostics ``pairs``), not counting the newest, which its synchroniser holds until
        a later message arrives."""
        from tqdm import tqdm

        messages: queue.Queue = queue.Queue(maxsize=prefetch)
        errors: list[BaseException] = []
        stop = threading.Event()
        reader = threading.Thread(target=_read_raw, args=(bag, topics, messages, stop, errors, odom_lead_s),
                                  daemon=True)
        cameras = [node_topic for node_topic, msgtype in topics.values() if msgtype in CAMERA_TYPES]

        def paired(k: int) -> bool:  # runs in the player thread; the recorder's values are replaced, not mutated
            # frame k - 1 cannot be paired yet: the synchroniser holds the newest frame until a later message
            return self.recorder.node_values().get("pairs", 0.0) >= k - 1 - max_unpaired

        hold = dict(hold=paired, hold_topics=cameras) if max_unpaired is not None else {}
        playing = threading.Thread(target=self.player.play, args=(messages, rate, max_gap_s), kwargs=hold,
                                   daemon=True)
        bar = tqdm(desc=f"mapping node <- {bag.name}", unit="frame", disable=not progress, leave=False)

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

    def drain_pairs(self, cameras: int, timeout: float) -> None:
        """Until the node has paired ``cameras`` camera frames, or its pair and keyframe counters stood still
        over three diagnostics (or ``timeout``); then its final diagnostics."""
        seen: list[tuple] = []
        last = [self.recorder.statuses]

        def settled() -> bool:
            if self.recorder.statuses == last[0]:
                return False
            last[0] = self.recorder.statuses
            values = self.recorder.node_values()
            seen.append((values.get("pairs"), values.get("keyframes")))
            return values.get("pairs", 0) >= cameras or (len(seen) >= 3 and len(set(seen[-3:])) == 1)

        self.spin_until(settled, timeout)
        self.sampling = False
        self.wait_diagnostics()


def record_mapping(bag: Path, cfg: NodeConfig, out_dir: Path, rate: float = 1.0, max_gap_s: float = 1.0,
                   odom_lead_s: float = 0.0, max_unpaired: int | None = None, namespace: str = MAPPING_NAMESPACE,
                   startup_timeout_s: float = 120.0, drain_s: float = 60.0, prefetch: int = 32,
                   progress: bool = False) -> dict[str, Any]:
    """Start the mapping node with ``cfg``, play ``bag``'s camera, LiDAR and odometry into it (odometry
    ``odom_lead_s`` of bag time early; ``max_unpaired``: see :meth:`MappingSession.play_bag`), stop it (it
    saves ``cfg.map.path``) and return what it reported:
    published counts, its last diagnostics values, the loop closures it published, its peak memory. The
    node's log is ``out_dir/mapping_node.log``."""
    if rate <= 0 or max_gap_s <= 0 or odom_lead_s < 0:
        raise ValueError(f"rate and max_gap_s must be positive and odom_lead_s not negative, got rate={rate}, "
                         f"max_gap_s={max_gap_s}, odom_lead_s={odom_lead_s}")
    topics = mapping_topics(bag, cfg)
    session = MappingSession(cfg, Path(out_dir), {node: MAPPING_INPUTS[msgtype] for node, msgtype in topics.values()},
                             namespace)
    try:
        session.wait_ready(startup_timeout_s)
        session.play_bag(bag, topics, rate, max_gap_s, prefetch, progress, odom_lead_s, max_unpaired)
        cameras = sum(session.player.sent[node] for node, msgtype in topics.values() if msgtype in CAMERA_TYPES)
        session.drain_pairs(cameras, drain_s)
        result = {"published": dict(session.player.sent), "hold_timeouts": session.player.hold_timeouts,
                  "node": session.recorder.node_values(),
                  "loop_closures": [list(msg.data) for _, msg in session.recorder.messages["loop_closure"]],
                  "node_rss_mb_max": max(session.rss, default=math.nan)}
    finally:
        session.close()
    result["exit_code"] = session.node.proc.returncode
    return result


def run_mapping(bag: str | Path, teacher: str | Path, student: str | Path, map_path: str | Path,
                rate: float = 1.0, max_gap_s: float = 1.0, odom_lead_s: float = 0.0, max_unpaired: int | None = None,
                config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Build the map at ``map_path`` by playing ``bag`` into the mapping node (``teacher`` + ``student``
    checkpoint folders) over DDS, odometry ``odom_lead_s`` early, camera frames held while the node has more
    than ``max_unpaired`` unpaired (module docstring). ``config`` (node YAML)
    then ``overrides`` (dotted keys) configure the node;
    ``map.run`` defaults to the bag's name. Writes ``mapping.json`` (the summary returned: map size, the
    node's counters, loop closures) and the node's log into ``out_dir`` (default: beside the map)."""
    bag, map_path = Path(bag), Path(map_path)
    for what, path in (("bag", bag), ("teacher checkpoint", Path(teacher)), ("student checkpoint", Path(student))):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    cfg = load_node_config(config, MAPPING_NODE_NAME, **{**(overrides or {}), "map.path": str(map_path),
                                                         "models.teacher_checkpoint": str(teacher),
                                                         "models.student_checkpoint": str(student)})
    if not cfg.map.run:
        cfg.map.run = bag.name if bag.is_dir() else bag.stem
    out = Path(out_dir) if out_dir is not None else map_path.parent
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = record_mapping(bag, cfg, out, rate=rate, max_gap_s=max_gap_s, odom_lead_s=odom_lead_s,
                            max_unpaired=max_unpaired, progress=progress)
    if not map_path.exists():
        raise ReplayError(f"the mapping node saved no map at {map_path} (log: {out / 'mapping_node.log'})")
    db = PlaceDatabase.load(map_path)
    result.update(bag=str(bag), map=str(map_path), run=cfg.map.run, map_size=len(db), rate=rate,
                  max_gap_s=max_gap_s, odom_lead_s=odom_lead_s, max_unpaired=max_unpaired,
                  seconds=time.monotonic() - started)
    from ..utils.results import write_json

    write_json(out / "mapping.json", result)
    return result
