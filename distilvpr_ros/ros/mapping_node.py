"""``distilvpr_mapping``: builds a place map live from camera + LiDAR + odometry with the teacher and student.

Inputs (sensor QoS: best-effort by default, ``qos.sensor_reliability``; per topic ``qos_overrides.*``)
    ``topics.camera`` (sensor_msgs/Image), ``topics.camera_compressed`` (sensor_msgs/CompressedImage; ignored
    while raw images arrive), ``topics.lidar`` (sensor_msgs/PointCloud2), ``topics.odom`` (nav_msgs/Odometry).

Pipeline
    camera + LiDAR paired by stamp (``ros/sync.py``, ``sync.slop_s``) → a bounded queue of pairs
    (``keyframes.queue_size``; when full the oldest pair is dropped: counted as ``missing_odometry`` when
    odometry never reached it, else as ``drops_queue_full``) → the oldest pair is taken once odometry has
    reached its stamp (odometry often arrives after the images it brackets) → odometry interpolated at the
    camera stamp (none close enough: throttled WARN, no keyframe) →
    :class:`~distilvpr_ros.pipeline.keyframes.Keyframer` gating →
    :class:`~distilvpr_ros.pipeline.map_builder.MapBuilder` (teacher + student descriptors, teacher-space loop check).

Threads
    ``main`` spins a :class:`~rclpy.executors.MultiThreadedExecutor`. Odometry, camera+LiDAR and the
    processing (networks, saving, reloading) each have their own mutually exclusive callback group, so
    odometry and sensor messages are taken while the networks run: a pair never misses its odometry because
    the odometry callback waited behind inference.

Calibration
    ``topics.camera_info`` (sensor_msgs/CameraInfo, '' = off) gives the camera's intrinsics and ``calibration.*``
    the extrinsics (or both, without CameraInfo):
    :func:`~distilvpr_ros.pipeline.calibration.calibration_from_config`.
    The map records it with the run's keyframe views (``views.store``), so localisation can verify against them;
    a CameraInfo that arrives later completes the run's calibration, one that contradicts it is reported (WARN)
    and ignored. Without intrinsics the views carry no calibration (LiDAR verification still runs).

Loop closures (``verification.enabled``, default true)
    A loop closure the teacher-space matcher proposes is published only when LiDAR registration of the keyframe's
    scan to the candidate's stored points accepts it (:class:`~distilvpr_ros.pipeline.map_builder.MapBuilder`);
    rejected ones are counted (``loop_closures_rejected``) and the last reason is in ``last_loop_rejection``.

Outputs (reliable, depth 10)
    ``loop_closure`` (std_msgs/Float64MultiArray ``[t_query, t_match]`` s; the LIO-SAM
    contract, remap to ``lio_loop/loop_closure_detection``), ``loop_closure/transform`` (std_msgs/Float64MultiArray
    ``[t_query, t_match, x, y, z, qx, qy, qz, qw, cov36]``, verified loop closures only: the registration's
    ``match_base_T_query_base`` and a diagonal covariance of the registration fitness (mean squared
    correspondence distance, m² and rad², as LIO-SAM weighs its ICP loops; floor 1e-6)), ``markers``
    (visualization_msgs/MarkerArray: query→match loop edges, and all keyframes every 10 s), ``/diagnostics``.

Services
    ``~/save_map`` (std_srvs/Trigger). The map is also saved every ``map.save_period_s``, on ``cleanup`` and on
    ``shutdown`` (Ctrl-C / SIGTERM / the lifecycle transition), after processing the pairs in hand, so no
    keyframe is lost. ``~/reload`` (std_srvs/Trigger): save, then load the models and the map again (same
    run); when that fails the node keeps mapping with what it had and says why.

Lifecycle (``ros/managed_node.py``): ``configure`` loads the models and the map, ``activate`` subscribes and
starts the timers, ``deactivate`` unsubscribes and finishes the pairs in hand, ``cleanup`` saves and releases.
``autostart`` (default true) runs configure + activate at start-up. A missing or mismatching model or map
fails ``configure``: the node stays alive and unconfigured, with an ERROR diagnostic.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ..data import msg_codec
from ..mapping.database import MapError
from ..pipeline.calibration import calibration_from_config
from ..pipeline.config import TEACHER_SPACE, NodeConfig
from ..pipeline.embedder import Embedder, ModelLoadError
from ..pipeline.keyframes import Keyframer, OdometryBuffer
from ..pipeline.map_builder import DuplicateKeyframe, MapBuilder
from .latency import LatencyWindow
from .diagnostics import ERROR
from .managed_node import DrainingExecutor, ManagedNode, run_managed
from .messages import keyframe_markers, loop_closure_msg, match_markers, msg_stamp, transform_msg
from .qos import OUTPUT_QOS, sensor_qos
from .sync import ApproxTimeSync, Pair

NODE_NAME = "distilvpr_mapping"
RAW_PREFERRED_S = 1.0  # compressed frames are ignored while raw frames arrived this recently


KEYFRAME_MARKERS_PERIOD_S = 10.0
EXECUTOR_THREADS = 4  # odometry, camera+LiDAR, processing, and the rest (services, diagnostics, parameters)


class MappingNode(ManagedNode):
    """The mapping node (module docstring). ``kwargs`` go to :class:`rclpy.lifecycle.LifecycleNode`."""

    def __init__(self, **kwargs) -> None:
        # Callback groups: odometry never waits behind the networks (MultiThreadedExecutor, see make_executor).
        self.odom_group = MutuallyExclusiveCallbackGroup()
        self.sensor_group = MutuallyExclusiveCallbackGroup()
        self.work_group = MutuallyExclusiveCallbackGroup()
        super().__init__(NODE_NAME, "mapping", **kwargs)
        cfg = self.cfg
        self._queue_lock = threading.Lock()  # the pair queue, the synchroniser, odometry buffer and keyframer
        self.sync = ApproxTimeSync(cfg.sync.slop_s, cfg.sync.queue_size, cfg.sync.reset_jump_s)
        k = cfg.keyframes
        self.odom = OdometryBuffer(k.odom_buffer_s, k.odom_tolerance_s, cfg.sync.reset_jump_s, k.max_position_m,
                                   k.max_speed_mps)
        self.keyframer = Keyframer(cfg.keyframes)
        self.window = LatencyWindow(cfg.diagnostics.window)
        self.counts = {"pairs": 0, "drops_queue_full": 0, "missing_odometry": 0, "loop_closures": 0, "saves": 0,
                       "loop_closures_proposed": 0, "loop_closures_rejected": 0}
        self.last_rejection = ""
        self.camera_info = None  # the latest CameraInfo's intrinsics (msg_codec.CameraIntrinsics)
        self._pairs: deque[Pair] = deque()  # pairs waiting for odometry or the networks, oldest first
        self._odom_frame = cfg.frames.map
        self._last_raw = -1e9
        self._last_save = time.monotonic()
        self.builder: MapBuilder | None = None
        self.loop_pub = self.transform_pub = self.marker_pub = None
        self._work = self.create_guard_condition(self._process, callback_group=self.work_group)
        self.create_service(Trigger, "~/save_map", self._on_save_map, callback_group=self.work_group)
        self.create_service(Trigger, "~/reload", self._on_reload, callback_group=self.work_group)
        self.autostart()

    @staticmethod
    def make_executor() -> DrainingExecutor:
        """The executor ``main`` spins this node with (one thread per callback group and one for the rest; a
        multi-threaded executor that finishes the callbacks in hand before it shuts down)."""
        return DrainingExecutor(num_threads=EXECUTOR_THREADS)

    # ------------------------------------------------------------------ lifecycle
    def _open(self, cfg: NodeConfig, resume: bool | None = None) -> MapBuilder:
        """Teacher, student and the map builder for ``cfg`` (``resume`` overrides ``map.resume``)."""
        teacher = Embedder.from_checkpoint(cfg.models.teacher_checkpoint, TEACHER_SPACE, cfg.models.num_threads)
        student = Embedder.student_from_config(cfg.models)  # models.backend: torch checkpoint or ONNX Runtime
        if resume is not None:
            cfg = cfg.model_copy(update={"map": cfg.map.model_copy(update={"resume": resume})})
        builder = MapBuilder.open(teacher, student, cfg, cfg.frames.map,
                                  calibration_from_config(cfg.calibration, self.camera_info))
        resumed = f" (resuming a map of {len(builder.db)} keyframes)" if len(builder.db) else ""
        self.get_logger().info(f"models loaded: teacher {teacher.identity[0]}, student {student.identity[0]} on "
                               f"{student.backend}; run {builder.run!r}{resumed}")
        return builder

    def configure(self) -> str:
        cfg = self.cfg
        try:
            self.builder = self._open(cfg)
        except (ModelLoadError, MapError) as e:
            return str(e)
        self.loop_pub = self.add_output(Float64MultiArray, "loop_closure", OUTPUT_QOS)
        self.transform_pub = self.add_output(Float64MultiArray, "loop_closure/transform", OUTPUT_QOS)
        self.marker_pub = self.add_output(MarkerArray, "markers", OUTPUT_QOS)
        self._last_save = time.monotonic()
        return ""

    def activate(self) -> None:
        cfg = self.cfg
        qos, t = sensor_qos(cfg.qos), cfg.topics
        sensors = dict(callback_group=self.sensor_group, watch=True)
        self.add_subscription(Image, t.camera, lambda m: self._on_camera(m, raw=True), qos, **sensors)
        if t.camera_compressed:
            self.add_subscription(CompressedImage, t.camera_compressed, lambda m: self._on_camera(m, raw=False), qos,
                                  **sensors)
        self.add_subscription(PointCloud2, t.lidar, self._on_lidar, qos, **sensors)
        if t.camera_info:
            self.add_subscription(CameraInfo, t.camera_info, self._on_camera_info, qos, callback_group=self.work_group)
        self.add_subscription(Odometry, t.odom, self._on_odom, qos, callback_group=self.odom_group, watch=True)
        self.add_timer(1.0, self._maybe_autosave, callback_group=self.work_group)
        self.add_timer(KEYFRAME_MARKERS_PERIOD_S, self._publish_keyframes, callback_group=self.work_group)
        self.get_logger().info(
            f"mapping into {cfg.map.path or '(map.path not set: nothing will be saved)'}; camera {t.camera}, "
            f"lidar {t.lidar}, odom {t.odom}, sensor QoS {cfg.qos.sensor_reliability}")

    def deactivate(self, publish: bool) -> None:
        self.drain(publish)

    def cleanup(self, reason: str) -> None:
        if self.builder is not None and self.builder.unsaved and self.cfg.map.path:
            ok, message = self.save_map()
            print(f"[{NODE_NAME}] {reason}: {message}", flush=True)
        self.builder = None
        self.loop_pub = self.transform_pub = self.marker_pub = None

    def reload(self) -> tuple[bool, str]:
        """Save, then load the models and the map again (same run); on failure keep mapping with the old ones."""
        if self.state == "unconfigured":
            return self.configure_on_reload()
        if self.state not in ("inactive", "active") or self.builder is None:
            return False, f"cannot reload in state {self.state}"
        with self.lock:
            old = self.builder
            if old.unsaved:
                if not self.cfg.map.path:
                    return False, f"reload refused: {old.unsaved} keyframes are only in memory (map.path is not set)"
                ok, message = self.save_map()
                if not ok:
                    return False, f"reload refused: saving the map failed: {message}"
            cfg = self.cfg.model_copy(update={"map": self.cfg.map.model_copy(update={"run": old.run})})
            try:  # the saved map is resumed (never replaced by an empty one)
                builder = self._open(cfg, resume=True if len(old.db) else None)
            except Exception as e:  # a file must never kill the node, nor stop a working one
                message = f"reload failed, still mapping with the previous models and map: {type(e).__name__}: {e}"
                self.problems.report("reload_failed", message, ERROR)
                return False, message
            self.builder = builder
            self.keyframer.reset()
            return True, f"reloaded: {len(builder.db)} keyframes, run {builder.run!r}"

    def _on_reload(self, request, response):
        response.success, response.message = self.reload()
        (self.get_logger().info if response.success else self.get_logger().error)(response.message)
        return response

    def config_changed(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        with self._queue_lock:
            self.keyframer.cfg = cfg.keyframes
            self.odom.tolerance_s = cfg.keyframes.odom_tolerance_s
            self.odom.horizon_s = cfg.keyframes.odom_buffer_s
            self.odom.max_position_m = cfg.keyframes.max_position_m
            self.odom.max_speed_mps = cfg.keyframes.max_speed_mps
        builder = self.builder
        if builder is not None:
            builder.matcher.cfg = cfg.matcher
            builder.matcher.reset()

    # ------------------------------------------------------------------ inputs
    def _on_camera(self, msg, raw: bool) -> None:
        now = time.monotonic()
        if raw:
            self._last_raw = now
        elif now - self._last_raw < RAW_PREFERRED_S:
            return
        self._push("camera", msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Complete the run's calibration with the camera's intrinsics (module doc "Calibration")."""
        try:
            info = msg_codec.camera_info_from_msg(msg)
            calib = calibration_from_config(self.cfg.calibration, info)
        except ValueError as e:
            self.problems.report("bad_camera_info", f"camera_info not usable: {e}")
            return
        with self.lock:
            self.camera_info = info
            b = self.builder
            if b is None or calib is None or (b.calibration is not None and b.calibration.to_dict() == calib.to_dict()):
                return
            recorded = b.db.calibration(b.run)
            if recorded is not None and recorded != calib.to_dict():
                self.problems.report("camera_info_mismatch", f"camera_info ({info.width}x{info.height}) differs from "
                                                             f"the calibration run {b.run!r} recorded: keeping it")
                return
            if b.views.store:
                b.db.set_calibration(b.run, calib.to_dict())
            b.calibration, b.T_base_lidar = calib, calib.T_base_lidar
            self.get_logger().info(f"camera_info {info.width}x{info.height}: calibration of run {b.run!r} recorded")

    def _on_lidar(self, msg: PointCloud2) -> None:
        self._push("lidar", msg)

    def _push(self, stream: str, msg) -> None:
        stamp = msg_stamp(msg)
        with self._queue_lock:
            result = self.sync.push(stream, stamp, msg)
            if result.reset:
                self.odom.clear()
                self.keyframer.reset()
            dropped = [self._enqueue(pair) for pair in result.pairs]
        if result.rejected:
            self.problems.report(f"{stream}_{result.rejected}",
                                 f"{stream} message at t={stamp:.6f} dropped: {result.rejected.replace('_', '-')} "
                                 f"stamp (previous {self.sync.last_stamp(stream):.6f})")
        if result.reset:
            self.get_logger().warning(f"{stream} stamps jumped back to t={stamp:.3f} (bag restarted?): "
                                      "synchroniser and odometry buffer reset")
        for d in dropped:
            self._report_dropped(d)
        if result.pairs:
            self._work.trigger()

    def _enqueue(self, pair: Pair) -> tuple[Pair, str] | None:
        """Queue a pair (caller holds ``_queue_lock``); when the queue was full, the oldest pair it dropped and
        the counter it went to (``missing_odometry`` when odometry never reached it, else ``drops_queue_full``)."""
        self.counts["pairs"] += 1
        dropped = None
        if len(self._pairs) >= self.cfg.keyframes.queue_size:
            oldest = self._pairs.popleft()
            dropped = (oldest, "missing_odometry" if self.odom.awaiting(oldest.stamp) else "drops_queue_full")
            self.counts[dropped[1]] += 1
        self._pairs.append(pair)
        return dropped

    def _report_dropped(self, dropped: tuple[Pair, str] | None) -> None:
        if dropped is None:
            return
        pair, kind = dropped
        size = self.cfg.keyframes.queue_size
        if kind == "missing_odometry":
            self._report_missing_odometry(pair.stamp, f"; {size} newer pairs queued behind it (keyframes.queue_size)")
        else:
            self.problems.report("queue_full", f"pair queue full ({size} pairs, keyframes.queue_size): the networks "
                                               f"are slower than the sensors; pair at t={pair.stamp:.6f} dropped")

    def _report_missing_odometry(self, stamp: float, why: str = "") -> None:
        with self._queue_lock:
            span = self.odom.span
        have = "none received" if span is None else f"have {span[0]:.3f}..{span[1]:.3f}"
        self.problems.report("missing_odometry", f"no odometry within {self.odom.tolerance_s:g} s of the pair at "
                                                 f"t={stamp:.6f} ({have}){why}; no keyframe")

    def _on_odom(self, msg: Odometry) -> None:
        try:
            pose = msg_codec.odometry_to_pose(msg)
            with self._queue_lock:
                accepted = self.odom.add(msg_stamp(msg), pose)
                ready = bool(self._pairs) and not self.odom.awaiting(self._pairs[0].stamp)
        except ValueError as e:
            self.problems.report("bad_odometry", f"odometry message dropped: {e}")
            return
        if not accepted:
            self.problems.report("odom_out_of_order", f"odometry at t={msg_stamp(msg):.6f} dropped: not after the "
                                                      "previous odometry stamp")
        self._odom_frame = msg.header.frame_id or self._odom_frame
        if ready:
            self._work.trigger()

    # ------------------------------------------------------------------ processing
    def _process(self) -> None:
        """One queued pair (the processing group's guard condition); triggers itself again while more are ready,
        so transitions and services get the lock between pairs."""
        if self._process_one(publish=True):
            self._work.trigger()

    def _process_one(self, publish: bool, give_up: bool = False) -> bool:
        """Turn the oldest queued pair into a keyframe if odometry has reached it (``give_up``: do not wait for
        odometry, e.g. at shutdown). True when a pair was taken."""
        with self.lock:
            with self._queue_lock:
                if self.builder is None or not self._pairs:
                    return False
                pair = self._pairs[0]
                if not give_up and self.odom.awaiting(pair.stamp):
                    return False
                self._pairs.popleft()
                pose = self.odom.pose_at(pair.stamp)
                decision = None if pose is None else self.keyframer.check(pose, pair.stamp)
            if pose is None:
                self.counts["missing_odometry"] += 1
                self._report_missing_odometry(pair.stamp)
            elif decision.accept:
                try:
                    self._keyframe(pair, pose, publish)
                except Exception as e:  # a bug or an unforeseen input must not kill the node
                    self.problems.report("internal_error", f"keyframe processing failed: {type(e).__name__}: {e}",
                                         ERROR)
            return True

    def drain(self, publish: bool) -> None:
        """Finish the pairs in hand: those odometry has reached, then the scans still waiting for a camera frame,
        then (last chance, e.g. at shutdown) the ones still waiting for odometry."""
        with self.lock:
            while self._process_one(publish):
                pass
            with self._queue_lock:
                dropped = [self._enqueue(pair) for pair in self.sync.flush()]
            for d in dropped:
                self._report_dropped(d)
            while self._process_one(publish, give_up=True):
                pass

    def _keyframe(self, pair: Pair, pose, publish: bool) -> None:
        stamp = pair.stamp
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
        with self._queue_lock:
            self.keyframer.accept(pose, stamp)
        self.window.add(result.seconds)
        lc = result.match.loop_closure
        if result.proposed is not None:
            self.counts["loop_closures_proposed"] += 1
            if lc is None:
                self.counts["loop_closures_rejected"] += 1
                self.last_rejection = result.match.reason
                self.get_logger().info(f"loop closure t={result.proposed[0]:.3f} ↔ t={result.proposed[1]:.3f} not "
                                       f"published: {result.match.reason}")
        if lc is not None:
            self.counts["loop_closures"] += 1
            self.get_logger().info(f"loop closure: t={lc[0]:.3f} ↔ t={lc[1]:.3f} (keyframe {result.match.best.id}, "
                                   f"score {result.match.best.score:.3f})")
            if publish and self.loop_pub is not None:
                self.loop_pub.publish(loop_closure_msg(*lc))
                v = result.verification
                if v is not None and v.accepted and v.transform is not None:
                    self.transform_pub.publish(transform_msg(*lc, v.transform, fitness_covariance(v.fitness)))
                edge = (pose[:3, 3], result.match.best.pose[:3])
                self.marker_pub.publish(match_markers(stamp, self.cfg.frames.map, [edge], [result.match.best],
                                                      ns="loop_closure"))

    def _publish_keyframes(self) -> None:
        with self.lock:
            if self.builder is not None and self.marker_pub is not None and len(self.builder.db):
                self.marker_pub.publish(keyframe_markers(self.builder.db.poses[:, :3], self.cfg.frames.map))

    # ------------------------------------------------------------------ saving
    def save_map(self) -> tuple[bool, str]:
        """Save the map now; ``(success, message)``."""
        with self.lock:
            if self.builder is None:
                return False, f"nothing to save: {self.fatal or 'no map loaded (state ' + self.state + ')'}"
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
        with self.lock:
            while self._process_one(publish=True):
                pass
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

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> dict:
        s = self.sync.stats
        b = self.builder
        with self._queue_lock:
            queued = len(self._pairs)
            waiting = sum(self.odom.awaiting(p.stamp) for p in self._pairs)
        return {
            "keyframes": len(b.db) if b else 0, "run": b.run if b else "", "unsaved": b.unsaved if b else 0,
            "keyframe_rate_hz": self.window.rate_hz(), "latency_ms_p50": self.window.percentile_ms(50),
            "latency_ms_p99": self.window.percentile_ms(99), "pairs": s.pairs,
            "drops": s.dropped + self.counts["drops_queue_full"], "drops_overflow": sum(s.overflow.values()),
            "drops_unpaired": s.unpaired, "drops_duplicate": s.duplicates, "drops_out_of_order": s.out_of_order,
            "drops_transport": sum(w.losses.lost for _, w in list(self._watches)),  # sequence gaps, all inputs
            "drops_queue_full": self.counts["drops_queue_full"], "missing_odometry": self.counts["missing_odometry"],
            "queued_pairs": queued, "waiting_for_odometry": waiting,
            "loop_closures": self.counts["loop_closures"], "saves": self.counts["saves"],
            "loop_closures_proposed": self.counts["loop_closures_proposed"],
            "loop_closures_rejected": self.counts["loop_closures_rejected"], "last_loop_rejection": self.last_rejection,
            "verification": bool(b is not None and b.verification.enabled),
            "calibration": "none" if b is None or b.calibration is None else
            f"{b.calibration.width}x{b.calibration.height} fx {b.calibration.K[0, 0]:.1f}",
            "map_path": self.cfg.map.path, "last_error": self.fatal or self.problems.last,
        }

    def ok_message(self, values: dict) -> str:
        return f"mapping: {values['keyframes']} keyframes"


def fitness_covariance(fitness: float, floor: float = 1e-6) -> np.ndarray:
    """Diagonal 6x6 covariance of a LiDAR loop closure: the registration fitness (mean squared correspondence
    distance) on every axis, as LIO-SAM weighs its ICP loop factors."""
    value = float(fitness) if np.isfinite(fitness) else 1.0
    return np.eye(6) * max(value, floor)


def main(args: list[str] | None = None) -> int:
    """``ros2 run distilvpr_ros mapping_node``."""
    return run_managed(MappingNode, args, MappingNode.make_executor)


if __name__ == "__main__":
    raise SystemExit(main())
