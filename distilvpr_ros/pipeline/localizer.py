"""Camera-only place recognition: the student's descriptor matched against the map's student space, then
(optionally) verified against the map's keyframe views, which gives the camera's metric pose (:class:`Localizer`).

Verification (``verification.enabled`` and a map with views). The matcher's top-k candidates
(``min(matcher.top_k, verification.rerank.top_k)``) of every frame — or only of frames the matcher accepted,
with ``verification.require_descriptor_match`` — are verified in descriptor order with
:class:`~distilvpr_ros.verification.camera.CameraVerifier` (local features of the query once per frame,
each keyframe prepared once — its features that have a LiDAR 3D point —, for the first ``cache_keyframes``
keyframes when the map is loaded with ``verification.preload_keyframes``; PnP + RANSAC), stopping at
the first accepted candidate (``rerank.stop_at_first``), and re-ranked by inliers
(:func:`~distilvpr_ros.verification.rerank.rerank`). The accepted candidate gives the query's base pose in the
map frame and its PnP covariance; with ``rerank.consecutive`` > 1 it counts only once that many consecutive
frames agree (:class:`~distilvpr_ros.verification.agreement.ConsecutiveAgreement`, the odometry ``motion``
between frames when given). Tracking (``rerank.tracking_min_inliers`` > 0): while the last accepted pose carried
forward by the frames' odometry gives a prediction (:class:`~distilvpr_ros.verification.agreement.PosePrior`), a
candidate with fewer inliers than ``camera.min_inliers`` but at least ``tracking_min_inliers`` is accepted when
its PnP pose agrees with the prediction; the first fix needs ``camera.min_inliers``, or, with
``rerank.tracking_bootstrap``, two consecutive frames whose poses (each with at least ``tracking_min_inliers``)
agree through the odometry between them (the first is tentative, the second is accepted and starts the track).
With ``rerank.tracking_gate_fixes`` a pose with ``camera.min_inliers`` must agree with the prediction too while there
is one (at night such fixes can be metres off: repeated lit windows make consistent wrong correspondences).
With ``rerank.tracking_candidates``, the map keyframes nearest to the prediction
(:meth:`~distilvpr_ros.mapping.matcher.PlaceMatcher.near`) are verified before the descriptor's candidates (as
ORB-SLAM tracks against the local map around its motion-model pose instead of searching the whole map); with
``rerank.tracking_local_map`` their correspondences are first pooled into one PnP
(:meth:`~distilvpr_ros.verification.camera.CameraVerifier.verify_local_map`).
:meth:`LocalizationResult.output` is the match to publish: the verified metric pose and covariance when verified,
and nothing accepted otherwise. A verified frame's loop closure is spaced like the
matcher's: none when one was emitted less than ``matcher.min_interval_s`` ago to a keyframe within
``matcher.same_place_radius_m`` of the verified one (the frame stays accepted).

Without verification (off, or a map without views when ``verification.enabled`` is false) the result is the
matcher's, as before. With verification on and a map without views, every frame is rejected with reason
"map has no keyframe views".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.geometry import pose_to_xyz_quat
from ..mapping.database import MapError, PlaceDatabase
from ..mapping.matcher import Candidate, MatcherConfig, MatchResult, PlaceMatcher
from ..verification.agreement import ConsecutiveAgreement, PosePrior, poses_agree
from ..data.calibration import CameraCalibration
from ..verification.camera import CameraVerification, CameraVerifier
from ..verification.rerank import Reranked, rerank
from .config import VerificationConfig
from .embedder import Embedder
from .image_quality import ImageQualityConfig, check_quality
from .views import NO_VIEWS, ViewCache


@dataclass
class CandidateCheck:
    """One verified (or skipped) candidate, in the re-ranked order."""

    id: int
    descriptor_score: float
    descriptor_rank: int
    accepted: bool
    reason: str
    inliers: int = 0
    correspondences: int = 0
    reprojection_error_px: float = float("inf")
    pose: np.ndarray | None = None  # world_T_base of the query from this candidate's PnP (4x4)


@dataclass
class VerifiedMatch:
    """Verification of one frame's candidates."""

    verified: bool  # a candidate was accepted (and confirmed by ``rerank.consecutive`` frames)
    reason: str  # why nothing was verified; "" when verified
    id: int | None = None  # the accepted keyframe
    pose: np.ndarray | None = None  # world_T_base (4x4) of the query, metric, map frame
    covariance: np.ndarray | None = None  # 6x6 (x, y, z, roll, pitch, yaw in the map frame)
    relative_pose: np.ndarray | None = None  # keyframe_base_T_query_base
    inliers: int = 0
    candidates: list[CandidateCheck] = field(default_factory=list)  # re-ranked; accepted first
    streak: int = 0  # consecutive agreeing frames so far
    tracked: bool = False  # accepted below camera.min_inliers because its pose agreed with the odometry prediction
    tentative: np.ndarray | None = None  # tracking_bootstrap: a pose below camera.min_inliers with nothing to agree
    added: list[Candidate] = field(default_factory=list)  # tracking_candidates not among the descriptor's candidates
    local_map: int = 0  # keyframes pooled into the accepted pose (rerank.tracking_local_map); 0: one keyframe's
    seconds: float = 0.0
    loop_closure: tuple[float, float] | None = None  # (t_query, t_keyframe) to publish; None when not verified or
    loop_reason: str = ""  # ... suppressed by ``matcher.min_interval_s`` (this says why)

    @property
    def reranked_ids(self) -> list[int]:
        return [c.id for c in self.candidates]

    def inliers_of(self, id: int) -> int:
        return next((c.inliers for c in self.candidates if c.id == id), 0)


@dataclass
class LocalizationResult:
    match: MatchResult  # the descriptor matcher's result
    descriptor: np.ndarray
    seconds: float
    verification: VerifiedMatch | None = None  # None when verification is off

    @property
    def accepted(self) -> bool:
        """The frame is localised: verified when verification runs, else the matcher's acceptance."""
        return self.verification.verified if self.verification is not None else self.match.accepted

    @property
    def pose(self) -> np.ndarray | None:
        """world_T_base to report: the verified metric pose, else (unverified path) the matched keyframe's."""
        if self.verification is not None:
            return self.verification.pose if self.verification.verified else None
        if self.match.accepted and self.match.best is not None:
            from ..data.geometry import make_pose
            return make_pose(self.match.best.pose[:3], self.match.best.pose[3:])
        return None

    def checks(self) -> list[tuple[int, CandidateCheck | None]]:
        """Each candidate with its verification check (None: not verified), in the descriptor's order, then the
        keyframes added near the tracking prediction (``rerank.tracking_candidates``) that the descriptor did not
        list; empty without verification."""
        v = self.verification
        if v is None:
            return []
        by_id = {c.id: c for c in v.candidates}
        return [(c.id, by_id.get(c.id)) for c in [*self.match.candidates, *v.added]]

    def output(self) -> MatchResult:
        """The :class:`MatchResult` to publish. Without verification: the matcher's. With it: accepted only when
        verified; ``best`` is the accepted keyframe carrying the *query's* metric pose, ``covariance`` the PnP
        one, ``loop_closure`` ``(t_query, t_keyframe)`` unless one was emitted less than ``matcher.min_interval_s``
        ago to a keyframe within ``matcher.same_place_radius_m`` (the matcher's de-duplication, applied to the
        verified keyframe; ``reason`` then says so); candidates in re-ranked order."""
        v, m = self.verification, self.match
        if v is None:
            return m
        by_id = {c.id: c for c in [*m.candidates, *v.added]}
        cands = [by_id[c.id] for c in v.candidates if c.id in by_id] + \
            [c for c in m.candidates if c.id not in {x.id for x in v.candidates}]
        if not v.verified:
            return replace(m, accepted=False, reason=f"not verified: {v.reason}", candidates=cands,
                           best=cands[0] if cands else None, loop_closure=None)
        kf = by_id[v.id]
        xyz, quat = pose_to_xyz_quat(v.pose)
        best = Candidate(kf.id, kf.score, kf.stamp, np.concatenate([xyz, quat]))
        return replace(m, accepted=True, reason=v.loop_reason, candidates=cands, best=best, covariance=v.covariance,
                       loop_closure=v.loop_closure)


class Localizer:
    """Camera-only place recognition: the student's descriptor matched against the map's student space,
    optionally verified against the map's keyframe views (module doc)."""

    def __init__(self, student: Embedder, db: PlaceDatabase, matcher: MatcherConfig | None = None,
                 run: str | None = None, quality: ImageQualityConfig | None = None,
                 verification: VerificationConfig | None = None, calibration: CameraCalibration | None = None) -> None:
        if student.kind not in db.spaces:
            raise MapError(None, f"map has no {student.kind!r} space (has {sorted(db.spaces)})")
        self.student, self.db, self.run = student, db, run or None
        self.quality = quality or ImageQualityConfig()
        self.matcher = PlaceMatcher(db, student.kind, matcher)
        db.index(student.kind)  # build the index now, not at the first query
        self.verification = verification or VerificationConfig(enabled=False)
        # the query camera's; None: the keyframe's (same rig). Also stands in for runs of the map without one.
        self.calibration = calibration
        self.verifier = CameraVerifier(self.verification.camera)
        self.cache = ViewCache(db, self.verification.cache_keyframes, calibration, self.verifier.prepare)
        self.preload_seconds = 0.0
        if self.verification.enabled and self.verification.preload_keyframes:
            self.preload()
        r = self.verification.rerank
        self.agreement = ConsecutiveAgreement(r.consecutive, r.agree_m, r.agree_deg)
        self.prior = PosePrior(r.tracking_max_travel_m)  # the last accepted pose
        self.hypothesis = PosePrior(r.tracking_max_travel_m)  # the last frame's tentative pose (tracking_bootstrap)
        self._loops: list[tuple[float, np.ndarray]] = []  # verified loop closures emitted: (t_query, keyframe xy)

    @classmethod
    def load(cls, student: Embedder, map_path: str | Path, matcher: MatcherConfig | None = None,
             run: str | None = None, quality: ImageQualityConfig | None = None,
             verification: VerificationConfig | None = None,
             calibration: CameraCalibration | None = None) -> "Localizer":
        """Load ``map_path`` refusing a map whose student space was built with another model
        (:class:`MapCompatibilityError`) or that is corrupt (:class:`MapError`)."""
        if not str(map_path):
            raise MapError(None, "map.path is not set")
        db = PlaceDatabase.load(map_path, expect={student.kind: student.sha256})
        return cls(student, db, matcher, run, quality, verification, calibration)

    def use_calibration(self, calibration: CameraCalibration | None) -> None:
        """Take another query camera calibration: the cached keyframe views are built again (and preloaded)."""
        self.calibration = calibration
        self.cache = ViewCache(self.db, self.verification.cache_keyframes, calibration, self.verifier.prepare)
        if self.verification.enabled and self.verification.preload_keyframes:
            self.preload()

    def preload(self) -> int:
        """Prepare the views of the first ``cache_keyframes`` keyframes (their features with a 3D point, from the
        decoded image and depth) now instead of at their first match; returns how many are ready
        (``preload_seconds``: the time)."""
        t0 = time.perf_counter()
        ready = 0
        if self.db.has_views:
            for id in range(min(len(self.db), self.verification.cache_keyframes)):
                view = self.cache.camera(id)
                ready += not isinstance(view, str) and not self.verifier.prepare(view)
        self.preload_seconds = time.perf_counter() - t0
        return ready

    def reset(self) -> None:
        """Forget the matcher's sequence history and the agreement streak (e.g. after a relocalisation)."""
        self.matcher.reset()
        self.agreement.reset()
        self.prior.reset()
        self.hypothesis.reset()
        self._loops = []

    def localize(self, stamp: float, image: np.ndarray, motion: np.ndarray | None = None) -> LocalizationResult:
        """Match one camera frame and, when enabled, verify it. ``motion``: odometry ``previous_base_T_current_base``
        since the previous frame (for ``rerank.consecutive`` > 1). ValueError for an unusable image
        (:class:`LowQualityImage` for one below the quality gate: nothing is matched)."""
        t0 = time.perf_counter()
        if image is not None and np.ndim(image) == 3 and np.size(image):
            check_quality(np.asarray(image), self.quality)
        desc = self.student(image=image)
        match = self.matcher.match(desc, stamp, run=self.run)
        verified = None
        if self.verification.enabled:
            verified = self.verify(image, match, motion, desc)
        return LocalizationResult(match, desc, time.perf_counter() - t0, verified)

    def verify(self, image: np.ndarray, match: MatchResult, motion: np.ndarray | None = None,
               descriptor: np.ndarray | None = None) -> VerifiedMatch:
        """Verify ``match``'s candidates against the query ``image`` (module doc); never raises on bad data.
        ``descriptor``: the query's, to score keyframes added near the prediction (``rerank.tracking_candidates``)."""
        t0 = time.perf_counter()
        cfg = self.verification
        r = cfg.rerank
        prediction, hypothesis = self.prior.advance(motion), self.hypothesis.advance(motion)
        bootstrap = bool(r.tracking_min_inliers and r.tracking_bootstrap and prediction is None)
        gate = prediction if prediction is not None else hypothesis if bootstrap else None
        near: list[Candidate] = []
        if r.tracking_min_inliers and r.tracking_candidates and prediction is not None and descriptor is not None:
            near = self.matcher.near(prediction, r.tracking_candidates, r.tracking_candidate_radius_m,
                                     r.tracking_candidate_deg, descriptor, match.stamp, self.run)
        out = self._verify(image, match, cfg, gate if r.tracking_min_inliers else None, bootstrap, near)
        if out.tentative is not None:
            self.hypothesis.accept(out.tentative)
        else:
            self.hypothesis.reset()
        confirmed = self.agreement.update(out.pose if out.verified else None, motion)
        out.streak = self.agreement.streak
        if out.verified and not confirmed:
            out.verified = False
            out.reason = f"waiting for {cfg.rerank.consecutive} consecutive agreeing frames ({out.streak} so far)"
        if out.verified:
            self.prior.accept(out.pose)
            out.loop_closure, out.loop_reason = self._loop_closure(match.stamp, out.id)
        out.seconds = time.perf_counter() - t0
        return out

    def _loop_closure(self, stamp: float, id: int) -> tuple[tuple[float, float] | None, str]:
        """``(t_query, t_keyframe)`` for a verified match to keyframe ``id``, or None and why: the matcher's
        de-duplication (``min_interval_s``, ``same_place_radius_m``) on the verified keyframe, not the descriptor's."""
        cfg = self.matcher.cfg
        xy = np.asarray(self.db.positions[id], dtype=np.float64)
        self._loops = [(t, p) for t, p in self._loops if abs(stamp - t) < cfg.min_interval_s]
        for t, p in self._loops:
            if float(np.hypot(*(xy - p))) <= cfg.same_place_radius_m:
                return None, (f"loop closure suppressed: same place as the one emitted {stamp - t:.2f} s ago "
                              f"(min_interval_s {cfg.min_interval_s:g})")
        self._loops.append((float(stamp), xy.copy()))
        return (float(stamp), float(self.db.stamps[id])), ""

    def _verify(self, image: np.ndarray, match: MatchResult, cfg: VerificationConfig,
                prediction: np.ndarray | None = None, bootstrap: bool = False,
                near: list[Candidate] = ()) -> VerifiedMatch:
        """Verify the candidates (``near``: keyframes near the prediction, first); below ``camera.min_inliers`` a
        pose is accepted only when it agrees with ``prediction``; with ``bootstrap`` and no prediction, the best
        such pose comes back as ``tentative``."""
        if not self.db.has_views:
            return VerifiedMatch(False, NO_VIEWS)
        if not match.candidates and not near:
            return VerifiedMatch(False, match.reason or "no candidates")
        if cfg.require_descriptor_match and not match.accepted:
            return VerifiedMatch(False, f"descriptor match not accepted: {match.reason}")
        query = self.verifier.features(image)
        r, strict = cfg.rerank, cfg.camera.min_inliers
        floor = min(r.tracking_min_inliers, strict) if prediction is not None or bootstrap else None
        tentative: list[CameraVerification] = []

        gate_fixes = r.tracking_gate_fixes and prediction is not None and not bootstrap

        def judged(res: CameraVerification) -> CameraVerification:
            """The tracking rules on a PnP result: a fix (camera.min_inliers) stands alone unless tracking_gate_fixes;
            fewer inliers need the prediction (or, bootstrapping, become tentative)."""
            if not res.accepted:
                return res
            agree = prediction is not None and poses_agree(prediction, res.pose, r.tracking_agree_m,
                                                           r.tracking_agree_deg)
            if (res.inliers >= strict and not gate_fixes) or agree:
                return res  # a fix, or tracked
            if res.inliers < strict and bootstrap:
                tentative.append(res)
                return replace(res, accepted=False, reason=f"tentative: {res.inliers} PnP inliers (< {strict}), "
                               "waiting for the next frame to agree")
            d = float(np.linalg.norm(res.pose[:3, 3] - prediction[:3, 3]))
            if res.inliers >= strict:
                return replace(res, accepted=False, reason=f"{d:.1f} m from the odometry prediction (while tracking a "
                               "fix must agree with it: tracking_gate_fixes)")
            return replace(res, accepted=False, reason=f"too few PnP inliers ({res.inliers} < {strict}) and "
                           f"{d:.1f} m from the odometry prediction")

        local, local_id, pooled = None, None, 0
        if prediction is not None and near and r.tracking_local_map:
            views = [(c.id, self.cache.camera(c.id)) for c in near]
            # usable ones only: the pooled pose's relative_pose is to the first keyframe verified against
            views = [(id, view) for id, view in views if not isinstance(view, str) and not self.verifier.prepare(view)]
            if views:
                res = judged(self.verifier.verify_local_map(query, [view for _, view in views], self.calibration,
                                                            min_inliers=floor))
                if res.accepted:
                    local, local_id, pooled = res, views[0][0], len(views)

        def check(id: int) -> CameraVerification:
            if id == local_id:
                return local
            view = self.cache.camera(id)
            if isinstance(view, str):
                return CameraVerification(False, view)
            return judged(self.verifier.verify(query, view, self.calibration, min_inliers=floor))

        ranked_ids = {c.id: rank for rank, c in enumerate(match.candidates)}
        added = [c for c in near if c.id not in ranked_ids]
        near_ids = {c.id for c in near}
        cands = list(near) + [c for c in match.candidates[:cfg.rerank.top_k] if c.id not in near_ids]
        ranked: Reranked = rerank([c.id for c in cands], [c.score for c in cands], check,
                                  stop_at_first=cfg.rerank.stop_at_first)
        for c in ranked.candidates:  # the descriptor's rank (-1: not in its candidates), not the order verified
            c.descriptor_rank = ranked_ids.get(c.id, -1)
        checks = [CandidateCheck(c.id, c.descriptor_score, c.descriptor_rank, c.accepted, c.result.reason,
                                 int(getattr(c.result, "inliers", 0)), int(getattr(c.result, "correspondences", 0)),
                                 float(getattr(c.result, "reprojection_error_px", math.inf)),
                                 getattr(c.result, "pose", None)) for c in ranked.candidates]
        best = ranked.best
        if best is None:
            reasons = "; ".join(f"{c.id}: {c.reason}" for c in checks[:3])
            hypothesis = max(tentative, key=lambda t: t.inliers).pose if tentative else None
            return VerifiedMatch(False, f"no candidate verified ({reasons})", candidates=checks, tentative=hypothesis,
                                 added=added)
        res: CameraVerification = best.result
        return VerifiedMatch(True, "", best.id, res.pose, res.covariance, res.relative_pose, res.inliers, checks,
                             tracked=res.inliers < strict, added=added, local_map=pooled if res is local else 0)
