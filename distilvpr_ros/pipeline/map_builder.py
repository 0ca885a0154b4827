"""Keyframes (teacher + student descriptors and the view verification needs) into a place database, with
teacher-space loop-closure candidates verified by LiDAR registration (:class:`MapBuilder`).

Loop closures. The teacher-space matcher proposes ``(t_query, t_match)`` (score, sequence and
de-duplication checks of :mod:`~distilvpr_ros.mapping.matcher`). With ``verification.enabled`` the
keyframe's LiDAR points are registered (GICP, :class:`~distilvpr_ros.verification.lidar.LidarVerifier`) to
the candidate's stored points, seeded per ``verification.lidar_seed`` (the keyframes' relative yaw from
odometry by default; the teacher's descriptor is yaw-invariant and gives none); up to
``verification.lidar_candidates`` candidates are tried, best first. Only an accepted registration
emits the loop closure; a rejected one leaves ``match.loop_closure`` None, ``match.accepted`` False and the
reason in ``match.reason``. :attr:`KeyframeResult.verification` carries the registration either way.

Submaps (``submap.length_m`` = D > 0). The teacher-space descriptor of a keyframe reads its LiDAR submap: the
scans of the earlier keyframes over the trailing D metres of odometry, in the keyframe's LiDAR frame
(:class:`~distilvpr_ros.data.submap.TrailingSubmaps`; at most ``submap.max_scans`` scans are kept). The caller
passes an odometry ``epoch`` with each keyframe that changes whenever the odometry frame may have changed (a
reset, a bag restart, frames without odometry); a keyframe never uses scans of another epoch, so after a break
its submap holds fewer scans (counted in ``submaps.counts``). The stored view keeps the keyframe's own scan, so
LiDAR verification registers single scans as before.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.geometry import invert, yaw_of
from ..data.submap import SubmapConfig, TrailingSubmaps
from ..mapping.database import IndexConfig, PlaceDatabase
from ..mapping.matcher import Candidate, MatcherConfig, MatchResult, PlaceMatcher
from ..data.calibration import CameraCalibration
from ..verification.bev import BevMatch, BevVerifier
from ..verification.lidar import LidarVerifier, Registration, yaw_transform
from .config import STUDENT_SPACE, TEACHER_SPACE, NodeConfig, VerificationConfig, ViewsConfig, default_run_name
from .embedder import Embedder, check_cloud
from .views import NO_VIEWS, ViewCache, make_view


class DuplicateKeyframe(ValueError):
    """A keyframe stamp that this run of the map already holds (nothing added)."""


@dataclass
class LoopVerification:
    """LiDAR verification of one proposed loop closure (the candidate that was accepted, else the last tried)."""

    candidate: int  # keyframe id of the candidate
    accepted: bool
    reason: str  # "" when accepted
    transform: np.ndarray | None = None  # candidate_base_T_query_base (4x4) from the registration
    fitness: float = float("inf")  # mean squared correspondence distance (m^2)
    inlier_ratio: float = 0.0
    tried: int = 0  # candidates registered
    seconds: float = 0.0
    registration: Registration | None = None
    bev: BevMatch | None = None  # the bird's-eye-view check of this candidate (verification.lidar_order / seed bev)


@dataclass
class KeyframeResult:
    """One keyframe added by :meth:`MapBuilder.add_keyframe` and its teacher-space loop-closure check."""

    id: int
    stamp: float
    pose: np.ndarray
    match: MatchResult  # after verification: loop_closure only when verified
    seconds: float  # time spent in the networks, the map and verification
    proposed: tuple[float, float] | None = None  # the matcher's loop closure before verification
    verification: LoopVerification | None = None  # None: nothing proposed, or verification off
    submap_scans: int = 1  # LiDAR scans in the teacher's input (1: the keyframe's own)

    @property
    def loop_closure(self) -> tuple[float, float] | None:
        """``(t_query, t_match)`` to publish: proposed and (when enabled) verified."""
        return self.match.loop_closure


class MapBuilder:
    """Adds keyframes (teacher + student descriptors) to a map and finds loop closures in teacher space.

    The map has one space per model, named after its kind (``teacher``, ``camera_student``) and tagged
    with the model's identity, so localisation can refuse a map built with another student.
    """

    def __init__(self, teacher: Embedder, student: Embedder, db: PlaceDatabase | None = None,
                 index: IndexConfig | None = None, matcher: MatcherConfig | None = None,
                 run: str = "", frame_id: str = "map", calibration: CameraCalibration | None = None,
                 verification: VerificationConfig | None = None, views: ViewsConfig | None = None,
                 submap: SubmapConfig | None = None) -> None:
        if teacher.kind != TEACHER_SPACE or student.kind != STUDENT_SPACE:
            raise ValueError(f"MapBuilder needs a teacher-space model and a camera_student, got {teacher.kind}, "
                             f"{student.kind}")
        self.teacher, self.student = teacher, student
        self.db = db if db is not None else PlaceDatabase([teacher.space(index), student.space(index)])
        self.frame_id = frame_id
        self.matcher = PlaceMatcher(self.db, TEACHER_SPACE, matcher)
        self.unsaved = 0  # keyframes added since the last save
        self.views = views or ViewsConfig()
        self.verification = verification or VerificationConfig()
        self.calibration = calibration
        self.run = run or default_run_name()
        self.lidar = LidarVerifier(self.verification.lidar)
        self.bev = BevVerifier(self.verification.bev)
        self.cache = ViewCache(self.db, self.verification.cache_keyframes)
        self.T_base_lidar = calibration.T_base_lidar if calibration is not None else np.eye(4)
        self.submaps = TrailingSubmaps(submap or SubmapConfig(), self.T_base_lidar)

    @property
    def run(self) -> str:
        """The run the next keyframes belong to. Setting it records the rig's calibration for that run (with stored
        views; ValueError: another rig in this run) and which of its stamps the map already holds (a bag played
        again, its clock jumping back, must not add its keyframes a second time)."""
        return self._run

    @run.setter
    def run(self, run: str) -> None:
        self._run = run
        if self.calibration is not None and self.views.store:
            self.db.set_calibration(run, self.calibration.to_dict())
        self._run_stamps = {float(t) for t, r in zip(self.db.stamps, self.db.runs) if r == run}

    @classmethod
    def open(cls, teacher: Embedder, student: Embedder, cfg: NodeConfig, frame_id: str = "map",
             calibration: CameraCalibration | None = None) -> "MapBuilder":
        """A builder for ``cfg.map.path``: appends to the existing map there when ``cfg.map.resume`` (it must
        have been built with the same two models, else :class:`MapCompatibilityError`), else starts empty.
        ``calibration``: the rig's (:func:`~.calibration.resolve_calibration`), stored with the run's views."""
        db = None
        path = Path(cfg.map.path) if cfg.map.path else None
        if cfg.map.resume and path is not None and (path.exists() or path.with_name(f"{path.name}.bak").exists()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                db = PlaceDatabase.load(path, expect={TEACHER_SPACE: teacher.sha256, STUDENT_SPACE: student.sha256})
        return cls(teacher, student, db, cfg.index, cfg.matcher, cfg.map.run, frame_id, calibration,
                   cfg.verification, cfg.views, cfg.submap)

    def add_keyframe(self, stamp: float, pose: np.ndarray, image: np.ndarray, cloud: np.ndarray,
                     frame_id: str | None = None, odom_epoch: int = 0) -> KeyframeResult:
        """Embed one camera+LiDAR keyframe with both models (the teacher on its trailing submap when
        ``submap.length_m`` > 0; ``odom_epoch``: module doc), match it (teacher space, this run's recent
        keyframes excluded), verify a proposed loop closure (module doc) and add it with its view.
        ValueError (nothing added) for unusable inputs."""
        t0 = time.perf_counter()
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"keyframe pose must be a finite 4x4 transform, got {pose.shape}")
        if float(stamp) in self._run_stamps:
            raise DuplicateKeyframe(f"run {self.run!r} already has a keyframe at t={float(stamp):.6f} "
                                    "(the same data played again?)")
        submap = None
        if self.submaps.cfg.enabled:
            cloud = check_cloud(cloud)
            self.submaps.base_T_sensor = self.T_base_lidar  # a later CameraInfo may complete the calibration
            submap = self.submaps.submap(float(stamp), pose, cloud, odom_epoch)
        teacher_desc = self.teacher(image=image, cloud=cloud if submap is None else submap.cloud)
        student_desc = self.student(image=image)
        view = make_view(image, cloud, self.views)
        match = self.matcher.match(teacher_desc, stamp, run=self.run)
        proposed, verification = match.loop_closure, None
        if proposed is not None and self.verification.enabled:
            verification = self.verify_loop(pose, view.points, match)
            if verification.accepted:
                best = self.db.meta(verification.candidate)
                match.best = next(c for c in match.candidates if c.id == verification.candidate)
                match.loop_closure = (float(stamp), best.stamp)
            else:
                self.matcher.withdraw(match)
                match.accepted, match.loop_closure = False, None
                match.reason = f"loop closure rejected by LiDAR verification: {verification.reason}"
        kf_id = self.db.add(stamp, pose, frame_id or self.frame_id, self.run,
                            {TEACHER_SPACE: teacher_desc, STUDENT_SPACE: student_desc},
                            view=view if self.views.store else None)
        self._run_stamps.add(float(stamp))
        self.unsaved += 1
        self.submaps.add(float(stamp), pose, cloud, odom_epoch)
        return KeyframeResult(kf_id, float(stamp), pose, match, time.perf_counter() - t0, proposed, verification,
                              1 if submap is None else submap.scans)

    def verify_loop(self, pose: np.ndarray, query_points: np.ndarray | None, match: MatchResult) -> LoopVerification:
        """Register the query keyframe's LiDAR points (LiDAR frame) to the stored points of the match's
        candidates, best first, until one is accepted (at most ``verification.lidar_candidates``). With
        ``verification.lidar_order: bev`` "best" is the bird's-eye-view check's order and the candidates it
        rejects are not registered; ``lidar_seed: bev`` seeds each registration with that check's yaw and shift."""
        t0 = time.perf_counter()
        cfg = self.verification
        cands: list[Candidate] = [match.best] + [c for c in match.candidates if c.id != match.best.id
                                                 and c.score >= self.matcher.cfg.min_score]
        out = LoopVerification(match.best.id, False, NO_VIEWS)
        if not self.db.has_views:
            out.seconds = time.perf_counter() - t0
            return out
        cands = cands[:cfg.lidar_candidates]
        checks: dict[int, BevMatch] = {}
        if cfg.lidar_order == "bev" or cfg.lidar_seed == "bev":
            query_view = self.bev.view(query_points)
            for cand in cands:
                target = self.cache.points(cand.id)
                if target is not None:
                    checks[cand.id] = self.bev.verify(query_view, self.bev.view(target))
        if cfg.lidar_order == "bev":
            ranked = sorted((c for c in cands if c.id in checks), key=lambda c: -checks[c.id].score)
            cands = [c for c in ranked if checks[c.id].accepted]
            if not cands:
                best = ranked[0] if ranked else match.best
                out = LoopVerification(best.id, False, checks[best.id].reason if best.id in checks else
                                       f"keyframe {best.id} has no stored LiDAR points", bev=checks.get(best.id))
        for tried, cand in enumerate(cands, start=1):
            target = self.cache.points(cand.id)
            if target is None:
                out = LoopVerification(cand.id, False, f"keyframe {cand.id} has no stored LiDAR points", tried=tried)
                continue
            seed = checks[cand.id].transform if cfg.lidar_seed == "bev" else self._seed(pose, cand.id)
            reg = self.lidar.register(query_points, target, initial=seed)
            transform = None
            if reg.transform is not None:
                transform = self.T_base_lidar @ reg.transform @ invert(self.T_base_lidar)
            out = LoopVerification(cand.id, reg.accepted, reg.reason, transform, reg.fitness, reg.inlier_ratio,
                                   tried, registration=reg, bev=checks.get(cand.id))
            if reg.accepted:
                break
        out.seconds = time.perf_counter() - t0
        return out

    def _seed(self, pose: np.ndarray, candidate: int) -> np.ndarray:
        """Initial ``candidate_lidar_T_query_lidar`` for the registration (``verification.lidar_seed``)."""
        seed = self.verification.lidar_seed
        if seed == "none":
            return np.eye(4)
        rel = invert(self.db.meta(candidate).pose_matrix) @ pose  # candidate_base_T_query_base from odometry
        if seed == "yaw":
            return yaw_transform(yaw_of(rel))
        return invert(self.T_base_lidar) @ rel @ self.T_base_lidar

    def save(self, path: str | Path) -> Path:
        """Write the map atomically (see :meth:`PlaceDatabase.save`)."""
        out = self.db.save(path)
        self.unsaved = 0
        return out
