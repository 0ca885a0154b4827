"""A bag played into the mapping node over DDS (what ``distilvpr demo`` builds its map with): :func:`run_mapping`.

The mapping node runs in its own process (``python -m distilvpr_ros.ros.mapping_node``, ``use_sim_time``;
:mod:`~distilvpr_ros.ros.replay_session`), and the ``bag_player`` publishes the bag's camera, LiDAR and
odometry messages as recorded (their serialized bytes, stamps untouched, as ``ros2 bag play`` does) with
``/clock``, paced at ``rate`` x the bag's time (pauses longer than ``max_gap_s`` shortened). After the last
message it waits until the node has paired every camera frame (or its counters stop moving) and stops it
with SIGINT: the node then processes what is pending and saves the map. What the node published (its
``/diagnostics``, loop closures, markers) is written to the mcap bag ``mapping_outputs/`` beside
``mapping.json``.

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

import math
import time
from pathlib import Path
from typing import Any

from ..data.calibration import CameraCalibration
from ..data.errors import DataError
from ..mapping.database import PlaceDatabase
from ..pipeline.calibration import calibration_overrides, world_calibration
from ..pipeline.config import NodeConfig, load_node_config
from .bag_player import CAMERA_TYPES, MESSAGE_CLASSES, absolute, bag_topics
from .mapping_node import NODE_NAME
from .node_process import ReplayError
from .replay_session import ReplaySession

NAMESPACE = "/distilvpr_mapping_replay"
MODULE = "distilvpr_ros.ros.mapping_node"
OUTPUTS_BAG = "mapping_outputs"


def mapping_topics(bag: Path, cfg: NodeConfig) -> dict[str, tuple[str, str]]:
    """``bag topic → (node topic, message type)`` of the mapping node's inputs found in ``bag``; DataError when
    the camera, LiDAR or odometry topic is missing."""
    names = (cfg.topics.camera, cfg.topics.camera_compressed, cfg.topics.lidar, cfg.topics.odom)
    wanted = {absolute(t): t for t in names if t}
    present = bag_topics(bag)
    found = {topic: (wanted[topic], msgtype) for topic, msgtype in present.items()
             if topic in wanted and msgtype in MESSAGE_CLASSES}
    types = {msgtype for _, msgtype in found.values()}
    for what, needed in (("camera", CAMERA_TYPES), ("LiDAR", ("sensor_msgs/msg/PointCloud2",)),
                         ("odometry", ("nav_msgs/msg/Odometry",))):
        if not types & set(needed):
            raise DataError(bag, f"no {what} topic for the mapping node (looked for {sorted(wanted)}; "
                                 f"bag has {sorted(present)})")
    return found


def with_calibration(overrides: dict[str, Any] | None, calibration: CameraCalibration | None) -> dict[str, Any]:
    """``overrides`` plus ``calibration`` as ``calibration.*`` keys, unless ``overrides`` already set some."""
    overrides = dict(overrides or {})
    if calibration is None or any(str(k).startswith("calibration.") for k in overrides):
        return overrides
    return {**calibration_overrides(calibration), **overrides}


class MappingReplay(ReplaySession):
    """The mapping node under replay. Used by :func:`record_mapping`: :meth:`wait_ready`, :meth:`play_bag`,
    :meth:`drain_pairs`, :meth:`close` (SIGINT: the node saves its map)."""

    def __init__(self, cfg: NodeConfig, out_dir: Path, topics: dict[str, tuple[str, str]],
                 namespace: str = NAMESPACE) -> None:
        super().__init__(cfg, out_dir, MODULE, NODE_NAME, "mapping node",
                         {node: MESSAGE_CLASSES[msgtype] for node, msgtype in topics.values()}, namespace,
                         "mapping_params.yaml", "mapping_node.log")

    def play_bag(self, bag: Path, topics: dict[str, tuple[str, str]], rate: float, max_gap_s: float,
                 prefetch: int, progress: bool, odom_lead_s: float = 0.0, max_unpaired: int | None = None) -> None:
        """Play ``topics`` of ``bag`` with a progress bar. With ``max_unpaired``, each camera frame waits until
        the node has paired all but that many of the frames sent before it (its /diagnostics ``pairs``), not
        counting the newest, which its synchroniser holds until a later message arrives."""
        cameras = [node_topic for node_topic, msgtype in topics.values() if msgtype in CAMERA_TYPES]

        def paired(k: int) -> bool:  # runs in the player thread; the recorder's values are replaced, not mutated
            # frame k - 1 cannot be paired yet: the synchroniser holds the newest frame until a later message
            return self.recorder.node_values().get("pairs", 0.0) >= k - 1 - max_unpaired

        hold = dict(hold=paired, hold_topics=cameras) if max_unpaired is not None else {}
        self.play(bag, topics, rate=rate, max_gap_s=max_gap_s, odom_lead_s=odom_lead_s, prefetch=prefetch,
                  progress=progress, **hold)

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
                   odom_lead_s: float = 0.0, max_unpaired: int | None = None, namespace: str = NAMESPACE,
                   startup_timeout_s: float = 120.0, drain_s: float = 60.0, prefetch: int = 32,
                   progress: bool = False) -> dict[str, Any]:
    """Start the mapping node with ``cfg``, play ``bag``'s camera, LiDAR and odometry into it (odometry
    ``odom_lead_s`` of bag time early; ``max_unpaired``: see :meth:`MappingReplay.play_bag`), stop it (it
    saves ``cfg.map.path``) and return what it reported: published counts, its last diagnostics values, the
    loop closures it published, its peak memory, and the message counts of the bag of its outputs. The
    node's log is ``out_dir/mapping_node.log``, the bag ``out_dir/mapping_outputs``."""
    if rate <= 0 or max_gap_s <= 0 or odom_lead_s < 0:
        raise ValueError(f"rate and max_gap_s must be positive and odom_lead_s not negative, got rate={rate}, "
                         f"max_gap_s={max_gap_s}, odom_lead_s={odom_lead_s}")
    out_dir = Path(out_dir)
    topics = mapping_topics(bag, cfg)
    session = MappingReplay(cfg, out_dir, topics, namespace)
    try:
        session.wait_ready(startup_timeout_s)
        session.play_bag(bag, topics, rate, max_gap_s, prefetch, progress, odom_lead_s, max_unpaired)
        cameras = sum(session.player.sent[node] for node, msgtype in topics.values() if msgtype in CAMERA_TYPES)
        session.drain_pairs(cameras, drain_s)
        result = {"published": dict(session.player.sent), "hold_timeouts": session.player.hold_timeouts,
                  "node": session.recorder.node_values(),
                  "loop_closures": [list(msg.data) for _, msg in session.recorder.messages["loop_closure"]],
                  "loop_closure_transforms": [list(msg.data) for _, msg in
                                              session.recorder.messages["loop_closure/transform"]],
                  "node_rss_mb_max": max(session.rss, default=math.nan)}
    finally:
        session.close()
    result["exit_code"] = session.node.proc.returncode
    result["outputs_bag"] = {"path": str(out_dir / OUTPUTS_BAG), "messages": session.write_bag(out_dir / OUTPUTS_BAG)}
    return result


def run_mapping(bag: str | Path, teacher: str | Path, student: str | Path, map_path: str | Path,
                rate: float = 1.0, max_gap_s: float = 1.0, odom_lead_s: float = 0.0, max_unpaired: int | None = None,
                config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                out_dir: str | Path | None = None, progress: bool = False,
                calibration: CameraCalibration | None = None) -> dict[str, Any]:
    """Build the map at ``map_path`` by playing ``bag`` into the mapping node (``teacher`` + ``student``
    checkpoint folders) over DDS, odometry ``odom_lead_s`` early, camera frames held while the node has more
    than ``max_unpaired`` unpaired (module docstring). ``config`` (node YAML)
    then ``overrides`` (dotted keys) configure the node;
    ``map.run`` defaults to the bag's name. Writes ``mapping.json`` (the summary returned: map size, the
    node's counters, loop closures), the node's log and the bag of its outputs into ``out_dir`` (default:
    beside the map). ``calibration``: the rig's, handed to the node as ``calibration.*`` parameters unless
    the config sets them (default: the synthetic world's the bag belongs to, if any), so the map records it."""
    bag, map_path = Path(bag), Path(map_path)
    for what, path in (("bag", bag), ("teacher checkpoint", Path(teacher)), ("student checkpoint", Path(student))):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    overrides = {**with_calibration(overrides, calibration or world_calibration(bag)), "map.path": str(map_path),
                 "models.teacher_checkpoint": str(teacher), "models.student_checkpoint": str(student)}
    cfg = load_node_config(config, NODE_NAME, **overrides)
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
