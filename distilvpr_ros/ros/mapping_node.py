"""``distilvpr_mapping``: builds a place map live from camera + LiDAR + odometry with the teacher and student.

Inputs (sensor QoS: best-effort by default, ``qos.sensor_reliability``)
    ``topics.camera`` (sensor_msgs/Image), ``topics.camera_compressed`` (sensor_msgs/CompressedImage; ignored
    while raw images arrive), ``topics.lidar`` (sensor_msgs/PointCloud2), ``topics.odom`` (nav_msgs/Odometry).

Pipeline
    camera + LiDAR paired by stamp (``ros/sync.py``, ``sync.slop_s``) → the latest pair waits in a one-slot
    buffer (a newer pair replaces it and counts as a drop) → pairs newer than the newest odometry wait for
    it in a queue of ``sync.queue_size`` (odometry often arrives after the images it brackets; a full queue
    gives up its oldest pair as missing odometry) → odometry interpolated at the camera stamp (none close
    enough: throttled WARN, no keyframe) → :class:`~distilvpr_ros.pipeline.keyframes.Keyframer` gating →
    :class:`~distilvpr_ros.pipeline.map_builder.MapBuilder` (teacher + student descriptors, teacher-space loop check).

Outputs
    ``loop_closure`` (std_msgs/Float64MultiArray ``[t_query, t_match]`` s, reliable depth 10; the LIO-SAM
    contract, remap to ``lio_loop/loop_closure_detection``), ``markers`` (visualization_msgs/MarkerArray:
    query→match loop edges), ``/diagnostics``.

Services
    ``~/save_map`` (std_srvs/Trigger). The map is also saved every ``map.save_period_s`` and on shutdown
    (Ctrl-C / SIGTERM), after processing a pending pair, so no keyframe is lost.

A missing or mismatching model or map leaves the node alive but idle, with an ERROR diagnostic.
"""

from __future__ import annotations

import time
from collections import deque

from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ..data import msg_codec
from ..mapping.database import MapError
from ..pipeline.config import STUDENT_SPACE, TEACHER_SPACE, NodeConfig
from ..pipeline.embedder import Embedder, ModelLoadError, configure_threads
from ..pipeline.keyframes import Keyframer, OdometryBuffer
from ..pipeline.map_builder import DuplicateKeyframe, MapBuilder
from .latency import LatencyWindow
from .diagnostics import ERROR, Diagnostics, ProblemLog
from .messages import loop_closure_msg, match_markers, msg_stamp
from .node_runner import run_node
from .params import declare_node_config, watch_node_config
from .qos import OUTPUT_QOS, sensor_qos
from .sync import ApproxTimeSync, Pair

NODE_NAME = "distilvpr_mapping"
RAW_PREFERRED_S = 1.0  # compressed frames are ignored while raw frames arrived this recently


class MappingNode(Node):
    """The mapping node (module docstring). ``kwargs`` go to :class:`rclpy.node.Node`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.cfg: NodeConfig = declare_node_config(self)
        watch_node_config(self, self._on_config)
        cfg = self.cfg
        configure_threads(cfg.models.num_threads)
        self.problems = ProblemLog(self.get_logger())
        self.diag = Diagnostics(self, "mapping")
        self.sync = ApproxTimeSync(cfg.sync.slop_s, cfg.sync.queue_size, cfg.sync.reset_jump_s)
        k = cfg.keyframes
        self.odom = OdometryBuffer(k.odom_buffer_s, k.odom_tolerance_s, cfg.sync.reset_jump_s, k.max_position_m,
                                   k.max_speed_mps)
        self.keyframer = Keyframer(cfg.keyframes)
        self.window = LatencyWindow(cfg.diagnostics.window)
        self.counts = {"pairs": 0, "pending_replaced": 0, "missing_odometry": 0, "loop_closures": 0, "saves": 0}
        self._pending: Pair | None = None
        self._waiting: deque[Pair] = deque()  # pairs newer than the newest odometry
        self._odom_frame = cfg.frames.map
        self._last_raw = -1e9
        self._last_save = time.monotonic()
        self.builder: MapBuilder | None = None
        self.fatal = ""
        self._load()

        qos = sensor_qos(cfg.qos)
        t = cfg.topics
        self.create_subscription(Image, t.camera, lambda m: self._on_camera(m, raw=True), qos)
        if t.camera_compressed:
            self.create_subscription(CompressedImage, t.camera_compressed, lambda m: self._on_camera(m, raw=False), qos)
        self.create_subscription(PointCloud2, t.lidar, self._on_lidar, qos)
        self.create_subscription(Odometry, t.odom, self._on_odom, qos)
        self.loop_pub = self.create_publisher(Float64MultiArray, "loop_closure", OUTPUT_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "markers", OUTPUT_QOS)
        self.create_service(Trigger, "~/save_map", self._on_save_map)
        self._work = self.create_guard_condition(self._process)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers keep running when sim time is paused
        self.create_timer(cfg.diagnostics.period_s, self._publish_diagnostics, clock=steady)
        self.create_timer(1.0, self._maybe_autosave, clock=steady)
        self.get_logger().info(
            f"mapping into {cfg.map.path or '(map.path not set: nothing will be saved)'}; camera {t.camera}, "
            f"lidar {t.lidar}, odom {t.odom}, sensor QoS {cfg.qos.sensor_reliability}")

    # ------------------------------------------------------------------ setup
    def _load(self) -> None:
        cfg = self.cfg
        try:
            teacher = Embedder.from_checkpoint(cfg.models.teacher_checkpoint, TEACHER_SPACE, cfg.models.num_threads)
            student = Embedder.from_checkpoint(cfg.models.student_checkpoint, STUDENT_SPACE, cfg.models.num_threads)
            self.builder = MapBuilder.open(teacher, student, cfg, cfg.frames.map)
        except (ModelLoadError, MapError) as e:
            self.fatal = str(e)
            self.get_logger().error(f"cannot start mapping, staying idle: {e}")
            return
        resumed = f" (resuming a map of {len(self.builder.db)} keyframes)" if len(self.builder.db) else ""
        self.get_logger().info(f"models loaded: teacher {teacher.identity[0]}, student {student.identity[0]}; "
                               f"run {self.builder.run!r}{resumed}")

    def _on_config(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.keyframer.cfg = cfg.keyframes
        if self.builder is not None:
            self.builder.matcher.cfg = cfg.matcher
            self.builder.matcher.reset()

    # ------------------------------------------------------------------ inputs
    def _on_camera(self, msg, raw: bool) -> None:
        now = time.monotonic()
        if raw:
            self._last_raw = now
        elif now - self._last_raw < RAW_PREFERRED_S:
            return
        self._push("camera", msg)

    def _on_lidar(self, msg: PointCloud2) -> None:
        self._push("lidar", msg)

    def _push(self, stream: str, msg) -> None:
        stamp = msg_stamp(msg)
        result = self.sync.push(stream, stamp, msg)
        if result.rejected:
            self.problems.report(f"{stream}_{result.rejected}",
                                 f"{stream} message at t={stamp:.6f} dropped: {result.rejected.replace('_', '-')} "
                                 f"stamp (previous {self.sync.last_stamp(stream):.6f})")
        if result.reset:
            self.get_logger().warning(f"{stream} stamps jumped back to t={stamp:.3f} (bag restarted?): "
                                      "synchroniser and odometry buffer reset")
            self.odom.clear()
            self.keyframer.reset()
        for pair in result.pairs:
            self.counts["pairs"] += 1
            if self._pending is not None:
                self.counts["pending_replaced"] += 1
            self._pending = pair
            self._work.trigger()

    def _on_odom(self, msg: Odometry) -> None:
        try:
            pose = msg_codec.odometry_to_pose(msg)
            accepted = self.odom.add(msg_stamp(msg), pose)
        except ValueError as e:
            self.problems.report("bad_odometry", f"odometry message dropped: {e}")
            return
        if not accepted:
            self.problems.report("odom_out_of_order", f"odometry at t={msg_stamp(msg):.6f} dropped: not after the "
                                                      "previous odometry stamp")
        self._odom_frame = msg.header.frame_id or self._odom_frame
        if self._waiting and not self.odom.awaiting(self._waiting[0].stamp):
            self._work.trigger()

    # ------------------------------------------------------------------ processing
    def _process(self, publish: bool = True, give_up: bool = False) -> None:
        """Turn the pending pair into a keyframe if the odometry and the gating say so."""
        try:
            self._process_pending(publish, give_up)
        except Exception as e:  # a bug or an unforeseen input must not kill the node
            self.problems.report("internal_error", f"keyframe processing failed: {type(e).__name__}: {e}", ERROR)

    def _process_pending(self, publish: bool, give_up: bool = False) -> None:
        """Keyframes from the waiting pairs odometry has reached, then from the pending pair (which waits
        itself when odometry has not reached it; ``give_up``: do not wait, e.g. at shutdown)."""
        if self.builder is None:
            return
        while self._waiting and (give_up or not self.odom.awaiting(self._waiting[0].stamp)):
            self._keyframe(self._waiting.popleft(), publish)
        pair, self._pending = self._pending, None
        if pair is None:
            return
        if not give_up and self.odom.awaiting(pair.stamp):
            if len(self._waiting) >= self.cfg.sync.queue_size:
                self._keyframe(self._waiting.popleft(), publish)  # gives it up as missing odometry
            self._waiting.append(pair)
            return
        self._keyframe(pair, publish)

    def _keyframe(self, pair: Pair, publish: bool) -> None:
        stamp = pair.stamp
        pose = self.odom.pose_at(stamp)
        if pose is None:
            self.counts["missing_odometry"] += 1
            span = self.odom.span
            have = "none received" if span is None else f"have {span[0]:.3f}..{span[1]:.3f}"
            self.problems.report("missing_odometry", f"no odometry within {self.odom.tolerance_s:g} s of the pair at "
                                                     f"t={stamp:.6f} ({have}); no keyframe")
            return
        if not self.keyframer.check(pose, stamp).accept:
            return
        try:
            image = (msg_codec.image_to_rgb(pair.camera) if isinstance(pair.camera, Image)
                     else msg_codec.compressed_to_rgb(pair.camera))
        except ValueError as e:
            self.problems.report("bad_image", f"camera frame at t={stamp:.6f} unusable: {e}")
            return
        try:
            cloud = msg_codec.cloud_from_pointcloud2(pair.lidar)
            result = self.builder.add_keyframe(stamp, pose, image, cloud, self._odom_frame)
        except DuplicateKeyframe as e:
            self.problems.report("duplicate_keyframe", f"keyframe refused: {e}")
            return
        except ValueError as e:
            self.problems.report("bad_cloud", f"LiDAR scan at t={pair.lidar_stamp:.6f} unusable: {e}")
            return
        self.keyframer.accept(pose, stamp)
        self.window.add(result.seconds)
        lc = result.match.loop_closure
        if lc is not None:
            self.counts["loop_closures"] += 1
            self.get_logger().info(f"loop closure: t={lc[0]:.3f} ↔ t={lc[1]:.3f} (keyframe {result.match.best.id}, "
                                   f"score {result.match.best.score:.3f})")
            if publish:
                self.loop_pub.publish(loop_closure_msg(*lc))
                edge = (pose[:3, 3], result.match.best.pose[:3])
                self.marker_pub.publish(match_markers(stamp, self.cfg.frames.map, [edge], [result.match.best],
                                                      ns="loop_closure"))

    # ------------------------------------------------------------------ saving
    def save_map(self) -> tuple[bool, str]:
        """Save the map now; ``(success, message)``."""
        if self.builder is None:
            return False, f"nothing to save: {self.fatal}"
        if not self.cfg.map.path:
            return False, "map.path is not set"
        try:
            path = self.builder.save(self.cfg.map.path)
        except (OSError, ValueError) as e:
            self.problems.report("save_failed", f"saving the map to {self.cfg.map.path} failed: {e}", ERROR)
            return False, str(e)
        self._last_save = time.monotonic()
        self.counts["saves"] += 1
        return True, f"saved {len(self.builder.db)} keyframes to {path}"

    def _on_save_map(self, request, response):
        self._process()
        response.success, response.message = self.save_map()
        (self.get_logger().info if response.success else self.get_logger().error)(response.message)
        return response

    def _maybe_autosave(self) -> None:
        period = self.cfg.map.save_period_s
        if (period > 0 and self.builder is not None and self.builder.unsaved
                and time.monotonic() - self._last_save >= period):
            ok, message = self.save_map()
            if ok:
                self.get_logger().info(f"autosave: {message}")

    def shutdown(self) -> None:
        """Pair waiting scans, process the pending pair and save (called by ``main`` after spinning stops)."""
        self._process(publish=False)
        for pair in self.sync.flush():
            self._pending = pair
            self._process(publish=False)
        self._process(publish=False, give_up=True)  # pairs still waiting for odometry: last chance
        if self.builder is not None and self.builder.unsaved and self.cfg.map.path:
            ok, message = self.save_map()
            print(f"[distilvpr_mapping] shutdown: {message}", flush=True)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> dict:
        s = self.sync.stats
        b = self.builder
        return {
            "keyframes": len(b.db) if b else 0, "run": b.run if b else "", "unsaved": b.unsaved if b else 0,
            "keyframe_rate_hz": self.window.rate_hz(), "latency_ms_p50": self.window.percentile_ms(50),
            "latency_ms_p99": self.window.percentile_ms(99), "pairs": s.pairs,
            "drops": s.dropped + self.counts["pending_replaced"], "drops_overflow": sum(s.overflow.values()),
            "drops_unpaired": s.unpaired, "drops_duplicate": s.duplicates, "drops_out_of_order": s.out_of_order,
            "pending_replaced": self.counts["pending_replaced"], "missing_odometry": self.counts["missing_odometry"],
            "waiting_for_odometry": len(self._waiting),
            "loop_closures": self.counts["loop_closures"], "saves": self.counts["saves"],
            "map_path": self.cfg.map.path, "last_error": self.fatal or self.problems.last,
        }

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        self.diag.publish_status(self.fatal, self.problems, f"mapping: {values['keyframes']} keyframes", values)


def main(args: list[str] | None = None) -> int:
    """``ros2 run distilvpr_ros mapping_node``."""
    return run_node(MappingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
