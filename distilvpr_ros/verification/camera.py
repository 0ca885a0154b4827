"""Camera verification and metric relocalization against one map keyframe.

Pipeline (:meth:`CameraVerifier.verify`): the keyframe is prepared once (:meth:`CameraVerifier.prepare`: local
features of its image, a 3D point for each from its sparse LiDAR depth, the features without one — or below
``min_point_height_m`` with ``drop_low_points`` — dropped; kept on the :class:`KeyframeView`) -> local features of
the query -> mutual-NN + ratio matches against the keyframe's 3D-bearing features (2D-3D correspondences) -> PnP +
RANSAC for the query camera in the keyframe camera's frame -> query camera and base pose in the map frame (through
the keyframe pose and the extrinsics) -> covariance from the inliers -> accept on inlier count and RMS reprojection
error. Matching only the keyframe features that have a 3D point is what a map-based localiser does: the others
cannot become correspondences, and leaving them out makes matching ~3x cheaper per candidate.

Bad input (no image, featureless image, no depth, too few correspondences, degenerate PnP)
returns a rejected :class:`CameraVerification` whose ``reason`` says why; it never raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..data.geometry import invert, transform_points
from ..data.calibration import CameraCalibration
from .config import CameraVerificationConfig
from .depth import lookup_points, sparse_depth
from .features import FeatureExtractor, LocalFeatures, match_features
from .pnp import pose_covariance, solve_pnp


@dataclass
class KeyframeView:
    """What camera verification needs of a map keyframe.

    ``depth`` is the sparse LiDAR depth in the keyframe's image (:func:`~.depth.sparse_depth`). ``features`` and
    ``points`` (their 3D points in the keyframe camera's frame, one row each) are filled by
    :meth:`CameraVerifier.prepare` on first use, for the settings in ``prepared``; ``problem`` says why the
    keyframe cannot be verified against ("" when it can). ``features`` given before that (all of the image's,
    extracted by the same verifier's extractor) are used instead of extracting them again.
    """

    pose: np.ndarray  # world_T_base of the keyframe
    calibration: CameraCalibration
    image: np.ndarray | None = None
    depth: np.ndarray | None = None
    features: LocalFeatures | None = None  # prepared: only the features with a 3D point
    points: np.ndarray | None = None  # (N, 3) camera-frame points of ``features``
    detected: int = 0  # features detected before those without a 3D point were dropped
    prepared: tuple | None = None  # the settings ``features`` / ``points`` were made with
    problem: str = ""

    @classmethod
    def from_cloud(cls, pose: np.ndarray, calibration: CameraCalibration, image: np.ndarray | None,
                   cloud_lidar: np.ndarray | None) -> "KeyframeView":
        depth = None if cloud_lidar is None else sparse_depth(cloud_lidar, calibration)
        return cls(np.asarray(pose, dtype=np.float64), calibration, image, depth)


@dataclass
class CameraVerification:
    """Outcome of verifying a query image against one keyframe."""

    accepted: bool
    reason: str  # why it was rejected; "" when accepted
    inliers: int = 0
    matches: int = 0  # feature matches (mutual NN + ratio) against the keyframe's features that have a 3D point
    correspondences: int = 0  # 2D-3D correspondences (= matches)
    reprojection_error_px: float = float("inf")  # RMS over the PnP inliers
    pose: np.ndarray | None = None  # world_T_base of the query (4x4)
    camera_pose: np.ndarray | None = None  # world_T_camera of the query (4x4)
    relative_pose: np.ndarray | None = None  # keyframe_base_T_query_base (4x4)
    covariance: np.ndarray | None = None  # 6x6 over map-frame x, y, z, roll, pitch, yaw of ``pose``
    timings_ms: dict[str, float] = field(default_factory=dict)
    inlier_uv_query: np.ndarray | None = None  # (I, 2) raw pixels, for debug images
    inlier_uv_keyframe: np.ndarray | None = None  # (I, 2)

    @property
    def score(self) -> float:
        """What re-ranking sorts by: the inlier count."""
        return float(self.inliers)


class CameraVerifier:
    """Verifies query images against keyframes with one configuration (features, PnP, thresholds)."""

    def __init__(self, config: CameraVerificationConfig | None = None):
        self.config = config or CameraVerificationConfig()
        c = self.config
        self.extractor = FeatureExtractor(c.features, c.max_features, c.upright, c.photometric, c.cnn_stage_tuple,
                                          c.cnn_head)
        self.backend = None if self.config.pnp_backend == "auto" else self.config.pnp_backend

    def features(self, image: np.ndarray | None) -> LocalFeatures:
        return self.extractor.extract(image)

    @property
    def _prepare_key(self) -> tuple:
        c = self.config
        return (self.extractor.key, c.depth_radius_px, c.depth_min_samples, c.depth_max_residual, c.drop_low_points,
                c.min_point_height_m)

    def prepare(self, keyframe: KeyframeView) -> str:
        """Features of the keyframe with a 3D point each (module doc), computed once per settings and kept on the
        view; returns why the keyframe cannot be verified against ("" when it can)."""
        key = self._prepare_key
        if keyframe.prepared == key:
            return keyframe.problem
        try:
            feats, pts, detected, problem = self._prepare(keyframe)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, cv2.error) as e:  # malformed arrays: unusable
            feats, pts, detected = LocalFeatures.empty(self.extractor.kind), np.zeros((0, 3)), 0
            problem = f"keyframe preparation failed: {type(e).__name__}: {e}"
        keyframe.features, keyframe.points, keyframe.detected, keyframe.problem = feats, pts, detected, problem
        keyframe.prepared = key
        return problem

    def _prepare(self, keyframe: KeyframeView) -> tuple[LocalFeatures, np.ndarray, int, str]:
        cfg, kcal = self.config, keyframe.calibration
        given = keyframe.features if keyframe.prepared is None and keyframe.features is not None and \
            keyframe.features.kind == self.extractor.kind else None  # extracted by the caller with this extractor
        feats, pts, detected, problem = LocalFeatures.empty(self.extractor.kind), np.zeros((0, 3)), 0, ""
        if keyframe.image is None and given is None:
            problem = "keyframe has no image"
        elif keyframe.depth is None or not np.any(keyframe.depth > 0):
            problem = "keyframe has no LiDAR depth in its image"
        else:
            all_feats = given if given is not None else self.extractor.extract(keyframe.image)
            detected = len(all_feats)
            if detected < cfg.min_inliers:
                problem = f"keyframe has too few features ({detected} < {cfg.min_inliers})"
            else:
                p = lookup_points(keyframe.depth, all_feats.uv, kcal, cfg.depth_radius_px, cfg.depth_min_samples,
                                  cfg.depth_max_residual)
                has = np.all(np.isfinite(p), axis=1)
                if cfg.drop_low_points:  # drop the road: its markings repeat along the street
                    with np.errstate(invalid="ignore"):
                        has &= transform_points(kcal.T_base_camera, p)[:, 2] >= cfg.min_point_height_m
                feats, pts = all_feats.subset(has), p[has]
                if len(feats) < cfg.min_inliers:
                    problem = (f"too few matches with LiDAR depth possible (the keyframe has {len(feats)} features "
                               f"with a 3D point < {cfg.min_inliers})")
        return feats, pts, detected, problem

    def verify(self, query: np.ndarray | LocalFeatures | None, keyframe: KeyframeView,
               query_calibration: CameraCalibration | None = None,
               min_inliers: int | None = None) -> CameraVerification:
        """Verify ``query`` (an RGB image or its features) against ``keyframe``; see the module doc.
        ``min_inliers``: this call's acceptance threshold instead of the configuration's (a tracking localizer
        lowers it when it can check the pose against an odometry prediction)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            result = self._verify(query, keyframe, query_calibration or keyframe.calibration, timings,
                                  self.config.min_inliers if min_inliers is None else max(4, int(min_inliers)))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, cv2.error) as e:  # malformed arrays: reject
            result = CameraVerification(False, f"verification failed: {type(e).__name__}: {e}")
        timings["total"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms = timings
        return result

    def verify_local_map(self, query: np.ndarray | LocalFeatures | None, keyframes: list[KeyframeView],
                         query_calibration: CameraCalibration | None = None,
                         min_inliers: int | None = None) -> CameraVerification:
        """Verify ``query`` against several neighbouring keyframes at once: the 2D-3D correspondences of each
        (matched as in :meth:`verify`, their points carried through the map into one frame) are pooled, one query
        feature keeping the correspondence of the first keyframe that matched it, and one PnP + RANSAC gives the
        pose in the map frame (ORB-SLAM's local map tracking: more inliers, spread over more depth, than one keyframe
        gives).
        ``relative_pose`` is to the first keyframe; accepted and rejected as :meth:`verify`; never raises."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        need = self.config.min_inliers if min_inliers is None else max(4, int(min_inliers))
        try:
            result = self._verify_local_map(query, keyframes, query_calibration, need)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, cv2.error) as e:
            result = CameraVerification(False, f"verification failed: {type(e).__name__}: {e}")
        timings["total"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms = timings
        return result

    def _verify_local_map(self, query, keyframes: list[KeyframeView], qcal: CameraCalibration | None,
                          min_inliers: int) -> CameraVerification:
        cfg = self.config
        usable = [k for k in keyframes if not self.prepare(k)]
        if not usable:
            return CameraVerification(False, "no keyframe of the local map can be verified against")
        qcal = qcal or usable[0].calibration
        q = query if isinstance(query, LocalFeatures) else self.features(query)
        if len(q) < min_inliers:
            return CameraVerification(False, f"query has too few features ({len(q)} < {min_inliers})")
        # the points in the first keyframe's camera frame (small coordinates for PnP), each keyframe's through the map
        world_T_ref = usable[0].pose @ usable[0].calibration.T_base_camera
        taken = np.zeros(len(q), bool)
        uv_raw, pts, uv_kf = [], [], []
        for k in usable:
            pairs = match_features(q, k.features, cfg.ratio, cfg.ratio_exclusion_px)
            pairs = pairs[~taken[pairs[:, 0]]]
            taken[pairs[:, 0]] = True
            uv_raw.append(q.uv[pairs[:, 0]])
            uv_kf.append(k.features.uv[pairs[:, 1]])
            pts.append(transform_points(invert(world_T_ref) @ k.pose @ k.calibration.T_base_camera,
                                        k.points[pairs[:, 1]]))
        uv_q_raw = np.concatenate(uv_raw)
        if len(uv_q_raw) < min_inliers:
            return CameraVerification(False, f"too few matches with LiDAR depth ({len(uv_q_raw)} < {min_inliers}) "
                                      f"in {len(usable)} keyframes", matches=len(uv_q_raw),
                                      correspondences=len(uv_q_raw))
        return self._solve(uv_q_raw, np.concatenate(uv_kf), np.concatenate(pts), world_T_ref, qcal, usable[0].pose,
                           min_inliers)

    def _solve(self, uv_q_raw: np.ndarray, uv_k: np.ndarray, pts: np.ndarray, world_T_pts: np.ndarray,
               qcal: CameraCalibration, keyframe_pose: np.ndarray, min_inliers: int,
               timings: dict[str, float] | None = None) -> CameraVerification:
        """PnP + RANSAC on 2D-3D correspondences (query pixels, points in the frame ``world_T_pts``), the accept
        rules, the query's poses and covariance; ``keyframe_pose``: what ``relative_pose`` is relative to."""
        cfg, t = self.config, time.perf_counter()
        n = len(uv_q_raw)
        base = dict(matches=n, correspondences=n)
        uv_q = qcal.undistort(uv_q_raw)
        sol, why = solve_pnp(uv_q, pts, qcal.K, qcal.width, qcal.height, cfg.ransac_threshold_px, self.backend,
                             cfg.ransac_iterations)
        if timings is not None:
            timings["pnp"] = (time.perf_counter() - t) * 1e3
        if sol is None:
            return CameraVerification(False, why, **base)
        inl = sol.inliers
        base.update(inliers=sol.num_inliers, reprojection_error_px=sol.rms_px, inlier_uv_query=uv_q_raw[inl],
                    inlier_uv_keyframe=uv_k[inl])
        if sol.num_inliers < min_inliers:
            return CameraVerification(False, f"too few PnP inliers ({sol.num_inliers} < {min_inliers})", **base)
        if sol.rms_px > cfg.max_reprojection_px:
            return CameraVerification(
                False, f"reprojection error too large ({sol.rms_px:.2f} > {cfg.max_reprojection_px} px)", **base)
        world_T_qcam = world_T_pts @ invert(sol.T_camera_points)
        world_T_qbase = world_T_qcam @ invert(qcal.T_base_camera)
        cov = pose_covariance(world_T_qbase, qcal.T_base_camera, qcal.K, uv_q[inl],
                              transform_points(world_T_pts, pts[inl]), cfg.min_sigma_px)
        if timings is not None:
            timings["covariance"] = (time.perf_counter() - t) * 1e3 - timings["pnp"]
        base.update(pose=world_T_qbase, camera_pose=world_T_qcam, relative_pose=invert(keyframe_pose) @ world_T_qbase)
        if cov is None:
            return CameraVerification(False, "degenerate PnP: the inliers do not determine the pose", **base)
        return CameraVerification(True, "", covariance=cov, **base)

    def _verify(self, query, keyframe: KeyframeView, qcal: CameraCalibration,
                timings: dict[str, float], min_inliers: int) -> CameraVerification:
        cfg = self.config
        t = time.perf_counter()

        def lap(name):
            nonlocal t
            now = time.perf_counter()
            timings[name] = (now - t) * 1e3
            t = now

        problem = self.prepare(keyframe)
        lap("keyframe")
        if problem:
            return CameraVerification(False, problem)
        q = query if isinstance(query, LocalFeatures) else self.features(query)
        k, pts_all = keyframe.features, keyframe.points
        lap("features")
        if len(q) < min_inliers:
            return CameraVerification(False, f"query has too few features ({len(q)} < {min_inliers})")
        pairs = match_features(q, k, cfg.ratio, cfg.ratio_exclusion_px)
        lap("matching")
        n_corr = len(pairs)  # every keyframe feature has a 3D point: a match is a 2D-3D correspondence
        lap("depth")
        if n_corr < min_inliers:
            return CameraVerification(False, f"too few matches with LiDAR depth ({n_corr} < {min_inliers})",
                                      matches=n_corr, correspondences=n_corr)
        return self._solve(q.uv[pairs[:, 0]], k.uv[pairs[:, 1]], pts_all[pairs[:, 1]],
                           keyframe.pose @ keyframe.calibration.T_base_camera, qcal, keyframe.pose, min_inliers,
                           timings)
