"""``distilvpr replay``: a bag's camera played into the localization node over DDS, its outputs recorded and scored.

What runs where (chosen so the numbers are the ones a robot would see; :mod:`~distilvpr_ros.ros.replay_session`)
    * The localization node runs in its own process, started as deployed::

          python -m distilvpr_ros.ros.localization_node --ros-args --params-file <out>/localization_params.yaml \\
              -r __ns:=/distilvpr_replay

      with ``use_sim_time`` true.
    * This process's ``bag_player`` publishes the bag's camera messages as recorded (``sensor_msgs/Image``
      on ``topics.camera``, or ``CompressedImage`` on ``topics.camera_compressed``: the node decodes them),
      each preceded by ``/clock``, paced at real time x ``rate`` from the bag's time, or evenly at ``hz``.
      When the localizer uses odometry (``verification.rerank.consecutive`` > 1 or ``tracking_min_inliers`` > 0)
      and the bag has ``topics.odom`` (nav_msgs/Odometry), that topic is played too, ``ODOM_LEAD_S`` of bag
      time ahead of the camera (with ``hz`` only the camera frames are paced).
      ``replay_recorder`` keeps every output of the node with its receive time.

Before the timed playback the bag's first camera frame is sent ``warmup`` times with stamps before the bag's
first (the first inferences of a fresh model are slow; the robot "stood at the start"); those are not scored.
After the last frame the recorder waits for the node to drain, reads its final ``/diagnostics`` (its drop
counter) and stops it with SIGINT. The node's diagnostics counters (frames, processed, drops, ...) are
reported for the timed playback only.

Where frames are dropped when the node cannot keep up: mostly in its DDS reader (best-effort, keep-last
``qos.sensor_depth``), counted by the node from gaps in the publisher's sequence numbers
(``drops_transport``), and in its one-frame slot (the node's ``drops``). Both are bounded; the recorder
counts every published frame left unanswered.

Outputs in the run folder: the report (:func:`~distilvpr_ros.evaluation.replay_metrics.write_report`:
``metrics.json``, ``metrics.md``, plots), ``node.log``, ``localization_params.yaml`` and
``localization_outputs/``, an mcap bag of everything the node published during the timed playback (logged
at the ``/clock`` of its arrival): open it in Foxglove or play it beside the input bag.

Scoring (:mod:`distilvpr_ros.evaluation.replay_metrics`) uses the bag's odometry as ground truth; a match is
correct within ``correct_m`` (the protocol's :data:`~distilvpr_ros.config.CORRECT_M`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.serialization import deserialize_message

from ..config import CORRECT_M
from ..data.geometry import interpolate_poses
from ..evaluation.replay_metrics import Recording, positives, score_replay, write_report
from ..mapping.database import PlaceDatabase
from ..pipeline.calibration import world_calibration
from ..pipeline.config import NodeConfig, load_node_config
from ..pipeline.offline import open_bag_sequence
from .bag_player import CAMERA_TYPES, MESSAGE_CLASSES, ODOMETRY_TYPE, Clock, absolute, bag_topics, first_message
from .localization_node import NODE_NAME
from .messages import msg_stamp, stamp_from_sec
from .node_process import ReplayError
from .replay_mapping import with_calibration
from .replay_session import ReplaySession

NAMESPACE = "/distilvpr_replay"
MODULE = "distilvpr_ros.ros.localization_node"
OUTPUTS_BAG = "localization_outputs"
WARMUP_LEAD_S = 100.0  # warm-up frames are stamped up to this long before the bag's first frame
WARMUP_SENDS = 1000  # at most this many warm-up sends (each waits up to 2 s for its answer)
ODOM_LEAD_S = 1.0  # odometry is sent this much bag time before the camera frames it brackets
#: Cumulative counters of the node's diagnostics, reported for the timed playback only (warm-up removed).
NODE_COUNTERS = ("frames", "processed", "drops", "drops_transport", "drops_duplicate", "drops_out_of_order",
                 "input_errors", "accepted", "loop_closures", "verified", "descriptor_accepted", "odometry")


def camera_topic(seq, cfg: NodeConfig) -> dict[str, tuple[str, str]]:
    """``{bag topic: (node topic, type)}`` of the camera topic ``seq`` (a ``BagSequence``) reads: raw images go
    to ``topics.camera``, compressed ones to ``topics.camera_compressed`` (ReplayError when that is off)."""
    node_topic = cfg.topics.camera if seq.image_type == "sensor_msgs/msg/Image" else cfg.topics.camera_compressed
    if not node_topic:
        raise ReplayError(f"{seq.path}: the camera topic {seq.image_topic} is compressed but "
                          "topics.camera_compressed is off: set it to let the node subscribe")
    return {seq.image_topic: (node_topic, seq.image_type)}


def odometry_topic(bag: Path, cfg: NodeConfig) -> dict[str, tuple[str, str]]:
    """``{bag topic: (node topic, type)}`` of ``topics.odom`` when the localizer uses odometry (``rerank.consecutive``
    > 1 or tracking) and ``bag`` has it as nav_msgs/Odometry; else empty."""
    r = cfg.verification.rerank
    if not cfg.topics.odom or not cfg.verification.enabled or (r.consecutive <= 1 and not r.tracking_min_inliers):
        return {}
    topic = absolute(cfg.topics.odom)
    return {topic: (cfg.topics.odom, ODOMETRY_TYPE)} if bag_topics(bag).get(topic) == ODOMETRY_TYPE else {}


class LocalizationReplay(ReplaySession):
    """The localization node under replay. Used by :func:`record_replay` in this order: :meth:`wait_ready`,
    :meth:`warm_up`, :meth:`play`, :meth:`drain`, :meth:`close`."""

    def __init__(self, cfg: NodeConfig, out_dir: Path, topics: dict[str, tuple[str, str]],
                 namespace: str = NAMESPACE) -> None:
        super().__init__(cfg, out_dir, MODULE, NODE_NAME, "localization node",
                         {node: MESSAGE_CLASSES[msgtype] for node, msgtype in topics.values()}, namespace,
                         "localization_params.yaml", "node.log")
        self.camera, self.camera_type = next((n, t) for n, t in topics.values() if t in CAMERA_TYPES)

    def wait_ready(self, timeout: float) -> None:
        """Until the node reports OK and both directions of DDS are matched; ReplayError on its ERROR."""
        scores = self.recorder.subs["place_candidates/scores"]
        super().wait_ready(timeout, lambda: scores.get_publisher_count() > 0)

    def warm_up(self, raw: bytes, t0: float, count: int, timeout: float) -> dict[str, Any]:
        """Send the camera message ``raw`` until ``count`` sends were answered, stamped before ``t0`` (a new
        stamp each time, so a resend after a lost frame is no duplicate; never negative: rclpy refuses a
        negative /clock). Then forget what was recorded; returns the node's diagnostics values after it."""
        msg = deserialize_message(raw, MESSAGE_CLASSES[self.camera_type])
        answered, deadline = 0, time.monotonic() + timeout
        lead = min(WARMUP_LEAD_S, t0)
        for stamp in t0 - lead + lead * np.arange(WARMUP_SENDS) / WARMUP_SENDS if lead > 1e-6 else []:
            if answered >= count:
                break
            if time.monotonic() > deadline:
                raise ReplayError(f"localization node never answered a camera frame:\n{self.node.log_tail()}")
            msg.header.stamp = stamp_from_sec(stamp)
            self.player.publish(self.camera, stamp, msg)
            answered += self.spin_until(lambda: self.recorder.last_query >= stamp - 1e-6, 2.0)
        self.wait_diagnostics()
        self.recorder.clear()
        return self.recorder.node_values()

    def drain(self, timeout: float) -> None:
        """Until the last frame sent was answered (or ``timeout``), then the node's final diagnostics."""
        sent = self.player.sent_stamps[self.camera]
        last = sent[-1] if sent else -math.inf
        self.spin_until(lambda: self.recorder.last_query >= last - 1e-6, timeout)
        self.sampling = False
        self.wait_diagnostics()

    def recording(self) -> Recording:
        """What was sent and answered, for :func:`~distilvpr_ros.evaluation.replay_metrics.score_replay`."""
        m = self.recorder.messages
        return Recording(
            np.asarray(self.player.sent_stamps[self.camera], dtype=np.float64),
            np.asarray(self.player.sent_wall[self.camera], dtype=np.float64),
            scores=[(t, list(msg.data)) for t, msg in m["place_candidates/scores"]],
            matches=[(t, msg_stamp(msg), (msg.pose.pose.position.x, msg.pose.pose.position.y,
                                          msg.pose.pose.position.z),
                      (msg.pose.pose.orientation.x, msg.pose.pose.orientation.y, msg.pose.pose.orientation.z,
                       msg.pose.pose.orientation.w)) for t, msg in m["place_match"]],
            loop_closures=[(t, msg.data[0], msg.data[1]) for t, msg in m["loop_closure"] if len(msg.data) == 2],
            inliers=[(t, list(msg.data)) for t, msg in m["place_candidates/inliers"]],
            transforms=[(t, list(msg.data)) for t, msg in m["loop_closure/transform"]],
            node=self.recorder.node_values(), node_rss_mb=list(self.rss))


def record_replay(seq, cfg: NodeConfig, out_dir: Path, rate: float = 1.0, hz: float | None = None,
                  max_frames: int | None = None, warmup: int = 3, namespace: str = NAMESPACE,
                  startup_timeout_s: float = 120.0, drain_s: float = 3.0, prefetch: int = 32) -> Recording:
    """Start the node with ``cfg``, play the camera messages of ``seq``'s bag (a ``BagSequence``: its camera
    topic) into it and record its outputs (module docstring). ``rate``: × real time; ``hz``: play evenly at
    this rate instead; ``max_frames``: only the first frames. Writes the node's log and the bag of its
    outputs (``OUTPUTS_BAG``) into ``out_dir``."""
    if rate <= 0 or (hz is not None and hz <= 0):
        raise ValueError(f"rate and hz must be positive, got rate={rate}, hz={hz}")
    out_dir = Path(out_dir)
    topics = {**camera_topic(seq, cfg), **odometry_topic(seq.path, cfg)}
    t0, first = first_message(seq.path, seq.image_topic)
    session = LocalizationReplay(cfg, out_dir, topics, namespace)
    try:
        session.wait_ready(startup_timeout_s)
        before = session.warm_up(first, t0, warmup, startup_timeout_s)
        odometry = len(topics) > 1
        session.play(seq.path, topics, rate=rate, hz=hz, odom_lead_s=ODOM_LEAD_S if odometry else 0.0,
                     max_messages=max_frames, prefetch=prefetch, hz_topics=[session.camera] if odometry else None,
                     count_odometry=False)
        session.drain(drain_s)
        rec = session.recording()
    finally:
        session.close()
    session.write_bag(out_dir / OUTPUTS_BAG)
    rec.node.update({key: rec.node[key] - before.get(key, 0.0) for key in NODE_COUNTERS if key in rec.node})
    return rec


def replay_config(bag: Path, map_path: Path, model: Path, backend: str | None = None,
                  config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """The node config of a replay: ``config`` (YAML), then ``overrides`` (dotted keys), with the map and
    model set; the backend follows the model file (``.onnx`` → onnxruntime) unless given; ``map.run``
    defaults to the bag's name, so the temporal exclusion hides only keyframes of the replayed run itself; the
    camera's calibration is that of the synthetic world the bag belongs to, if any (unless ``calibration.*`` are
    given): the node then uses the map's when the intrinsics agree."""
    backend = backend or ("onnxruntime" if Path(model).suffix == ".onnx" else "torch")
    model_key = "models.student_onnx" if backend == "onnxruntime" else "models.student_checkpoint"
    overrides = with_calibration(overrides, world_calibration(bag))
    cfg = load_node_config(config, NODE_NAME, **{**overrides, "map.path": str(map_path),
                                                 "models.backend": backend, model_key: str(model)})
    if not cfg.map.run:
        cfg.map.run = Path(bag).name if Path(bag).is_dir() else Path(bag).stem
    return cfg


def run_replay(bag: str | Path, map_path: str | Path, model: str | Path, rate: float = 1.0,
               backend: str | None = None, config: str | Path | None = None, out_dir: str | Path | None = None,
               results_root: str | Path = "results", correct_m: float = CORRECT_M, hz: float | None = None,
               max_frames: int | None = None, warmup: int = 3,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay ``bag`` into the localization node with ``model`` against ``map_path``, score the recording
    against the bag's odometry and write the report and the bag of the node's outputs into ``out_dir``
    (default ``results_root/replay/<timestamp>`` + ``latest``). Returns the metrics
    (``replay_metrics.REPLAY_KEYS`` and more). ``hz``, ``max_frames``: see :func:`record_replay`;
    ``overrides``: node config keys."""
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

    query_poses = interpolate_poses(rec.sent_stamps, seq.timestamps, seq.poses)
    query_xy = query_poses[:, :2, 3]
    truth = positives(query_xy, db.positions, correct_m, rec.sent_stamps, db.stamps, db.runs, cfg.map.run,
                      cfg.matcher.exclude_recent_s)
    metrics, details = score_replay(rec, query_xy, db.positions, truth, correct_m, query_poses, db.stamps)
    metrics.update(bag=str(bag), map=str(map_path), map_size=len(db), model=str(model),
                   backend=cfg.models.backend, rate=rate, hz=hz, clock="/clock" if Clock is not None else "none",
                   outputs_bag=str(out / OUTPUTS_BAG), out=str(out))
    write_report(out, metrics, details, query_xy, db.positions, rec.sent_stamps, title=f"replay {bag.name}")
    return metrics
