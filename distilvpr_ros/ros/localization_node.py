"""``distilvpr_localization``: camera-only place recognition against a map, with the distilled student.

Inputs (sensor QoS: best-effort by default)
    ``topics.camera`` (sensor_msgs/Image) and ``topics.camera_compressed`` (sensor_msgs/CompressedImage;
    ignored while raw images arrive). Latest-frame policy: one slot, processed as soon as the executor is
    free; a frame replaced before it was processed counts as a drop (``drops``); frames lost before the
    node saw them (e.g. overwritten in the best-effort DDS queue) are counted from gaps in the publisher's
    sequence numbers (``drops_transport``). Duplicate and out-of-order stamps are dropped with a throttled
    WARN.

Odometry (optional)
    ``topics.odom`` (nav_msgs/Odometry, '' = not subscribed) gives the vehicle's motion between camera frames
    (the odometry interpolated at each image stamp, ``keyframes.odom_tolerance_s``); the localizer uses it for
    ``verification.rerank.consecutive`` > 1 and tracking (``rerank.tracking_min_inliers``). A frame without
    odometry at its stamp has no motion (tracking lapses; consecutive poses are compared unmoved).

Calibration
    ``topics.camera_info`` (sensor_msgs/CameraInfo, '' = off) gives the query camera's intrinsics, ``calibration.*``
    its extrinsics (or, without CameraInfo, both): :func:`~distilvpr_ros.pipeline.calibration.calibration_from_config`.
    A camera with the intrinsics (K, image size) the map recorded is taken to be the map's own camera: its stored
    calibration is used (same rig). Without any calibration the map's is used; runs of the map without one are
    rejected by camera verification with a reason.

Verification (``verification.enabled``, default true; a map with keyframe views, format 2)
    The top-k candidates are verified against the keyframes' images and LiDAR points (local features, PnP +
    RANSAC: :class:`~distilvpr_ros.pipeline.localizer.Localizer`); a verified frame gives the camera's metric
    6-DoF pose in the map. With verification on, a frame that is not verified publishes no ``place_match`` and no
    ``loop_closure`` (``last_match`` in the diagnostics says why: e.g. "no candidate verified (...)", "map has
    no keyframe views"). With it off the node publishes the matcher's decisions as before.

Outputs (reliable, depth 10; every header stamp is the query image's stamp, frame ``frames.map``)
    * ``place_match`` (geometry_msgs/PoseWithCovarianceStamped): the accepted match. Verified: the query's
      metric pose in the map with the PnP covariance (x, y, z, roll, pitch, yaw); unverified (verification off):
      the matched keyframe's pose, covariance from the matcher. Remappable to ``/initialpose``.
    * ``place_candidates`` (geometry_msgs/PoseArray): the top-k keyframes in descriptor rank order, every frame.
    * ``place_candidates/scores`` (std_msgs/Float64MultiArray):
      ``[t_query, id_1, score_1, t_1, id_2, score_2, t_2, ...]`` (``layout.data_offset = 1``), same order.
    * ``place_candidates/inliers`` (std_msgs/Float64MultiArray, with verification on):
      ``[t_query, descriptor_accepted, verified, id_1, inliers_1, check_1, ...]`` (``data_offset = 3``), the
      candidates of ``place_candidates`` in the same order; ``check`` 1 accepted, 0 rejected, -1 not checked.
    * ``loop_closure`` (std_msgs/Float64MultiArray ``[t_query, t_match]`` s, the LIO-SAM contract): only
      verified matches when verification is on.
    * ``loop_closure/transform`` (std_msgs/Float64MultiArray, verified matches):
      ``[t_query, t_match, x, y, z, qx, qy, qz, qw, cov36]``: the query base in the matched keyframe's base frame
      (from PnP) and its 6x6 covariance about the keyframe's axes (:func:`~.messages.transform_msg`).
    * ``~/debug/matches`` (sensor_msgs/Image rgb8): query and matched keyframe side by side with the PnP inlier
      lines; built only for verified frames while someone subscribes.
    * ``markers`` (visualization_msgs/MarkerArray): edges from the best match to the other candidates,
      candidate spheres, and all keyframes (``keyframes`` namespace, every 10 s).
    * ``/diagnostics``: rate, latency p50/p99, drops (replaced / lost in transport), map size, backend,
      verification (on/off, verified frames, calibration source), odometry messages received, last match decision,
      last error.

Services
    ``~/reload`` (std_srvs/Trigger): load the model and the map again (e.g. after a new map was saved). When
    that fails the node keeps localising with the model and map it had, and says why (response, ERROR
    diagnostic); in the unconfigured state it runs ``configure`` (and ``activate`` with ``autostart``).

Lifecycle (``ros/managed_node.py``): ``configure`` loads the student and the map and creates the publishers,
``activate`` subscribes to the camera and starts the keyframe-marker timer, ``deactivate`` unsubscribes,
``cleanup`` releases model and map. ``autostart`` (default true) runs configure + activate at start-up.
A missing checkpoint, a corrupt map or a map built with another student fails ``configure``: the node stays
alive and unconfigured, with an ERROR diagnostic saying why.
"""

from __future__ import annotations

import time

import numpy as np
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ..data import msg_codec
from ..data.calibration import CameraCalibration
from ..data.geometry import invert
from ..mapping.database import MapError
from ..pipeline.calibration import calibration_from_config
from ..pipeline.config import NodeConfig
from ..pipeline.embedder import Embedder, ModelLoadError
from ..pipeline.image_quality import LowQualityImage
from ..pipeline.keyframes import OdometryBuffer
from ..pipeline.localizer import LocalizationResult, Localizer
from ..mapping.views import decode_jpeg
from .diagnostics import ERROR, TransportLosses
from .latency import LatencyWindow
from .managed_node import ManagedNode, run_managed
from .messages import (CHECK_ACCEPTED, CHECK_REJECTED, CHECK_SKIPPED, candidates_msgs, inliers_msg, keyframe_markers,
                       loop_closure_msg, match_markers, matches_image, msg_stamp, place_match_msg, transform_msg)
from .qos import OUTPUT_QOS, sensor_qos
from .sync import StampGuard

NODE_NAME = "distilvpr_localization"
OUTPUT_TOPICS = {"match_pub": "place_match", "cand_pub": "place_candidates", "score_pub": "place_candidates/scores",
                 "inlier_pub": "place_candidates/inliers", "loop_pub": "loop_closure",
                 "transform_pub": "loop_closure/transform", "marker_pub": "markers", "debug_pub": "~/debug/matches"}
OUTPUT_TYPES = {"match_pub": PoseWithCovarianceStamped, "cand_pub": PoseArray, "score_pub": Float64MultiArray,
                "inlier_pub": Float64MultiArray, "loop_pub": Float64MultiArray, "transform_pub": Float64MultiArray,
                "marker_pub": MarkerArray, "debug_pub": Image}
RAW_PREFERRED_S = 1.0
KEYFRAME_MARKERS_PERIOD_S = 10.0


class LocalizationNode(ManagedNode):
    """The localisation node (module docstring). ``kwargs`` go to :class:`rclpy.lifecycle.LifecycleNode`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, "localization", **kwargs)
        cfg = self.cfg
        self.guard = StampGuard(cfg.sync.reset_jump_s)
        self.window = LatencyWindow(cfg.diagnostics.window)
        self.counts = {"frames": 0, "processed": 0, "dropped": 0, "accepted": 0, "loop_closures": 0,
                       "low_quality": 0, "verified": 0, "descriptor_accepted": 0, "odometry": 0}
        self.localizer: Localizer | None = None
        self.last_reason = ""
        self._pending = None
        self._last_raw = -1e9
        self.lost = {True: TransportLosses(), False: TransportLosses()}  # raw, compressed
        self.camera_info = None  # the latest CameraInfo's intrinsics (msg_codec.CameraIntrinsics)
        k = cfg.keyframes
        self.odom = OdometryBuffer(k.odom_buffer_s, k.odom_tolerance_s, cfg.sync.reset_jump_s, k.max_position_m,
                                   k.max_speed_mps)
        self._last_odom: tuple[int, np.ndarray] | None = None  # (buffer epoch, pose) at the last matched frame
        self.calibration_source = "map"
        for name in OUTPUT_TOPICS:
            setattr(self, name, None)
        self._work = self.create_guard_condition(self._process)
        self.create_service(Trigger, "~/reload", self._on_reload)
        self.autostart()

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> Localizer:
        """The student and the map as configured (raises what loading raises)."""
        cfg = self.cfg
        student = Embedder.student_from_config(cfg.models)
        localizer = Localizer.load(student, cfg.map.path, cfg.matcher, cfg.map.run or None,
                                   cfg.image_quality, cfg.verification)
        self._set_calibration(localizer)
        views = "with keyframe views" if localizer.db.has_views else "WITHOUT keyframe views"
        verify = f"verification on, calibration: {self.calibration_source}" if cfg.verification.enabled \
            else "verification off"
        self.get_logger().info(f"localising against {cfg.map.path} ({len(localizer.db)} keyframes, {views}) with "
                               f"{student.identity[0]} on {student.backend}; camera {cfg.topics.camera}; {verify}")
        return localizer

    def _set_calibration(self, localizer: Localizer) -> None:
        """The query camera's calibration (module doc "Calibration") for ``localizer``."""
        resolved = calibration_from_config(self.cfg.calibration, self.camera_info)
        source = ("camera_info + calibration.*" if self.camera_info is not None else "calibration.*")
        if resolved is None:
            calib, self.calibration_source = None, "map"
        elif any(same_camera(resolved, CameraCalibration.from_dict(d)) for d in localizer.db.calibrations.values()):
            calib, self.calibration_source = None, f"map (same camera as {source})"
        else:
            calib, self.calibration_source = resolved, source
        if calib is not localizer.calibration:  # views built with the previous calibration are built again
            localizer.use_calibration(calib)

    def configure(self) -> str:
        try:
            self.localizer = self.load()
        except (ModelLoadError, MapError) as e:
            return str(e)
        for name, topic in OUTPUT_TOPICS.items():
            setattr(self, name, self.add_output(OUTPUT_TYPES[name], topic, OUTPUT_QOS))
        return ""

    def activate(self) -> None:
        cfg = self.cfg
        qos = sensor_qos(cfg.qos)
        self.add_subscription(Image, cfg.topics.camera, lambda m, info: self._on_camera(m, True, info), qos,
                              watch=True)
        if cfg.topics.camera_compressed:
            self.add_subscription(CompressedImage, cfg.topics.camera_compressed,
                                  lambda m, info: self._on_camera(m, False, info), qos, watch=True)
        if cfg.topics.camera_info:
            self.add_subscription(CameraInfo, cfg.topics.camera_info, self._on_camera_info, qos)
        if cfg.topics.odom:
            self.add_subscription(Odometry, cfg.topics.odom, self._on_odom, qos)
        self.add_timer(KEYFRAME_MARKERS_PERIOD_S, self._publish_keyframes)
        self._publish_keyframes()

    def deactivate(self, publish: bool) -> None:
        self._pending = None  # a frame received but not matched yet is dropped with the subscription

    def cleanup(self, reason: str) -> None:
        self.localizer = None
        for name in OUTPUT_TOPICS:
            setattr(self, name, None)

    def reload(self) -> tuple[bool, str]:
        """Load the model and map again; on failure keep the ones in use and say why."""
        if self.state == "unconfigured":
            return self.configure_on_reload()
        if self.state not in ("inactive", "active"):
            return False, f"cannot reload in state {self.state}"
        with self.lock:
            try:
                localizer = self.load()
            except Exception as e:  # a file must never kill the node, nor stop a working one
                message = f"reload failed, still using the previous model and map: {type(e).__name__}: {e}"
                self.problems.report("reload_failed", message, ERROR)
                return False, message
            self.localizer = localizer
            self._publish_keyframes()
            return True, f"reloaded: {len(localizer.db)} keyframes"

    def _on_reload(self, request, response):
        response.success, response.message = self.reload()
        return response

    def config_changed(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        if self.localizer is not None:
            self.localizer.quality = cfg.image_quality
            self.localizer.matcher.cfg = cfg.matcher
            self.localizer.matcher.reset()

    # ------------------------------------------------------------------ input
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            info = msg_codec.camera_info_from_msg(msg)
        except ValueError as e:
            self.problems.report("bad_camera_info", f"camera_info dropped: {e}")
            return
        old = self.camera_info
        if old is not None and old.width == info.width and old.height == info.height and np.allclose(old.K, info.K) \
                and np.array_equal(np.asarray(old.D), np.asarray(info.D)):
            return
        with self.lock:
            self.camera_info = info
            if self.localizer is not None:
                try:
                    self._set_calibration(self.localizer)
                except ValueError as e:  # e.g. K with a zero focal length
                    self.camera_info = old
                    self.problems.report("bad_camera_info", f"camera_info not usable: {e}")
                    return
            self.get_logger().info(f"camera_info {info.width}x{info.height}: calibration {self.calibration_source}")

    def _on_odom(self, msg: Odometry) -> None:
        try:
            pose = msg_codec.odometry_to_pose(msg)
            with self.lock:
                self.counts["odometry"] += self.odom.add(msg_stamp(msg), pose)
        except ValueError as e:
            self.problems.report("bad_odometry", f"odometry message dropped: {e}")

    def motion_at(self, stamp: float) -> np.ndarray | None:
        """Odometry motion ``previous_base_T_current_base`` from the last matched frame to ``stamp`` (None without
        odometry at either, or across an odometry reset); remembers ``stamp``'s pose for the next frame."""
        pose = self.odom.pose_at(stamp)
        last, self._last_odom = self._last_odom, None if pose is None else (self.odom.epoch, pose)
        if pose is None or last is None or last[0] != self.odom.epoch:
            return None
        return invert(last[1]) @ pose

    def _on_camera(self, msg, raw: bool, info=None) -> None:
        self.lost[raw].update(info)
        now = time.monotonic()
        if raw:
            self._last_raw = now
        elif now - self._last_raw < RAW_PREFERRED_S:
            return
        self.counts["frames"] += 1
        stamp = msg_stamp(msg)
        verdict = self.guard.check(stamp)
        if verdict in ("duplicate", "out_of_order"):
            what = verdict.replace("_", "-")
            self.problems.report(f"camera_{verdict}", f"camera frame at t={stamp:.6f} dropped: {what} stamp "
                                                      f"(previous {self.guard.last:.6f})")
            return
        if verdict == "jump" and self.localizer is not None:
            self.get_logger().warning(f"camera stamps jumped back to t={stamp:.3f} (bag restarted?): matcher reset")
            self.localizer.matcher.reset()
        if self._pending is not None:
            self.counts["dropped"] += 1
        self._pending = msg
        self._work.trigger()

    # ------------------------------------------------------------------ processing
    def _process(self) -> None:
        with self.lock:
            try:
                self._process_pending()
            except Exception as e:  # a bug or an unforeseen input must not kill the node
                self.problems.report("internal_error", f"localisation failed: {type(e).__name__}: {e}", ERROR)

    def _process_pending(self) -> None:
        msg, self._pending = self._pending, None
        if msg is None or self.localizer is None or self.state != "active":
            return
        stamp = msg_stamp(msg)
        try:
            image = msg_codec.image_to_rgb(msg) if isinstance(msg, Image) else msg_codec.compressed_to_rgb(msg)
            out = self.localizer.localize(stamp, image, self.motion_at(stamp))
        except LowQualityImage as e:
            self.counts["low_quality"] += 1
            self.problems.report("low_quality_image", f"camera frame at t={stamp:.6f} not matched: {e}")
            return
        except ValueError as e:
            self.problems.report("bad_image", f"camera frame at t={stamp:.6f} unusable: {e}")
            return
        self.counts["processed"] += 1
        self.window.add(out.seconds)
        self.publish(out, image)

    def publish(self, out: LocalizationResult, image: np.ndarray | None = None) -> None:
        """Publish the outputs of one localisation result (``image``: the query, for the debug image)."""
        frame = self.cfg.frames.map
        match, v = out.output(), out.verification
        self.last_reason = match.reason
        self.counts["descriptor_accepted"] += bool(out.match.accepted)
        poses, scores = candidates_msgs(out.match, frame)  # descriptor rank order (the contract before verification)
        self.cand_pub.publish(poses)
        self.score_pub.publish(scores)
        if v is not None:
            rows = [(id, 0 if c is None else c.inliers,
                     CHECK_SKIPPED if c is None else CHECK_ACCEPTED if c.accepted else CHECK_REJECTED)
                    for id, c in out.checks()]
            self.inlier_pub.publish(inliers_msg(match.stamp, out.match.accepted, v.verified, rows))
        if match.best is not None:
            edges = [(match.best.pose[:3], c.pose[:3]) for c in match.candidates[1:]]
            self.marker_pub.publish(match_markers(match.stamp, frame, edges, match.candidates))
        if match.accepted:
            self.counts["accepted"] += 1
            self.match_pub.publish(place_match_msg(match, frame))
        if match.loop_closure is not None:
            self.counts["loop_closures"] += 1
            self.loop_pub.publish(loop_closure_msg(*match.loop_closure))
        if v is not None and v.verified:
            self.counts["verified"] += 1
            cov = keyframe_covariance(v.covariance, self.localizer.db.meta(v.id).pose_matrix)
            self.transform_pub.publish(transform_msg(*match.loop_closure, v.relative_pose, cov))
            if image is not None and self.debug_pub.get_subscription_count() > 0:
                self._publish_debug(match.stamp, image, v.id)

    def _publish_debug(self, stamp: float, image: np.ndarray, keyframe: int) -> None:
        """``~/debug/matches`` of a verified frame: the accepted keyframe verified again (only while subscribed)."""
        loc = self.localizer
        view = loc.cache.camera(keyframe)
        if isinstance(view, str):
            return
        pixels = decode_jpeg(loc.db.view(keyframe).image_jpeg)  # the cache keeps features, not pixels
        if pixels is None:
            return
        check = loc.verifier.verify(image, view, loc.calibration)
        if check.inlier_uv_query is not None and check.inlier_uv_keyframe is not None:
            self.debug_pub.publish(matches_image(image, pixels, check.inlier_uv_query, check.inlier_uv_keyframe,
                                                 stamp, self.cfg.frames.map))

    def _publish_keyframes(self) -> None:
        if self.localizer is not None and self.marker_pub is not None and len(self.localizer.db):
            self.marker_pub.publish(keyframe_markers(self.localizer.db.poses[:, :3], self.cfg.frames.map))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> dict:
        loc = self.localizer
        return {
            "rate_hz": self.window.rate_hz(), "latency_ms_p50": self.window.percentile_ms(50),
            "latency_ms_p99": self.window.percentile_ms(99), "frames": self.counts["frames"],
            "processed": self.counts["processed"], "drops": self.counts["dropped"],
            "rejected_low_quality": self.counts["low_quality"],
            "drops_transport": self.lost[True].lost + self.lost[False].lost,
            "drops_duplicate": self.guard.duplicates, "drops_out_of_order": self.guard.out_of_order,
            "input_errors": self.problems.counts.get("bad_image", 0), "accepted": self.counts["accepted"],
            "loop_closures": self.counts["loop_closures"], "map_size": len(loc.db) if loc else 0,
            "map_path": self.cfg.map.path, "backend": self.cfg.models.backend,
            "verification": bool(loc is not None and loc.verification.enabled),
            "map_has_views": bool(loc is not None and loc.db.has_views), "verified": self.counts["verified"],
            "descriptor_accepted": self.counts["descriptor_accepted"], "calibration": self.calibration_source,
            "odometry": self.counts["odometry"],
            "model": loc.student.identity[0] if loc else "", "last_match": self.last_reason or "accepted",
            "last_error": self.fatal or self.problems.last,
        }

    def ok_message(self, values: dict) -> str:
        return f"localising against {values['map_size']} keyframes"


def same_camera(a: CameraCalibration, b: CameraCalibration) -> bool:
    """Same intrinsics and image size (the node then takes ``b``, the map's, as the query camera's calibration)."""
    return a.width == b.width and a.height == b.height and np.allclose(a.K, b.K, rtol=1e-6, atol=1e-6) \
        and np.allclose(np.pad(a.dist, (0, max(0, len(b.dist) - len(a.dist)))),
                        np.pad(b.dist, (0, max(0, len(a.dist) - len(b.dist)))))


def keyframe_covariance(covariance: np.ndarray, world_T_keyframe: np.ndarray) -> np.ndarray:
    """A 6x6 pose covariance about the map's axes expressed about the keyframe's axes (both blocks rotated)."""
    R = np.asarray(world_T_keyframe, float)[:3, :3]
    J = np.zeros((6, 6))
    J[:3, :3] = J[3:, 3:] = R.T
    return J @ np.asarray(covariance, float).reshape(6, 6) @ J.T


def main(args: list[str] | None = None) -> int:
    """``ros2 run distilvpr_ros localization_node``."""
    return run_managed(LocalizationNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
