"""Keyframes (teacher + student descriptors) into a place database, with teacher-space loop-closure
candidates (:class:`MapBuilder`)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..mapping.database import IndexConfig, PlaceDatabase
from ..mapping.matcher import MatcherConfig, MatchResult, PlaceMatcher
from .config import STUDENT_SPACE, TEACHER_SPACE, NodeConfig, default_run_name
from .embedder import Embedder


class DuplicateKeyframe(ValueError):
    """A keyframe stamp that this run of the map already holds (nothing added)."""


@dataclass
class KeyframeResult:
    """One keyframe added by :meth:`MapBuilder.add_keyframe` and its teacher-space loop-closure check."""

    id: int
    stamp: float
    pose: np.ndarray
    match: MatchResult
    seconds: float  # time spent in the networks and the map


class MapBuilder:
    """Adds keyframes (teacher + student descriptors) to a map and finds loop closures in teacher space.

    The map has one space per model, named after its kind (``teacher``, ``camera_student``) and tagged
    with the model's identity, so localisation can refuse a map built with another student.
    """

    def __init__(self, teacher: Embedder, student: Embedder, db: PlaceDatabase | None = None,
                 index: IndexConfig | None = None, matcher: MatcherConfig | None = None,
                 run: str = "", frame_id: str = "map") -> None:
        if teacher.kind != TEACHER_SPACE or student.kind != STUDENT_SPACE:
            raise ValueError(f"MapBuilder needs a teacher and a camera_student, got {teacher.kind}, {student.kind}")
        self.teacher, self.student = teacher, student
        self.db = db if db is not None else PlaceDatabase([teacher.space(index), student.space(index)])
        self.run = run or default_run_name()
        self.frame_id = frame_id
        self.matcher = PlaceMatcher(self.db, TEACHER_SPACE, matcher)
        self.unsaved = 0  # keyframes added since the last save
        # stamps of this run already in the map: a bag played again (clock jumping back) must not add
        # its keyframes a second time
        self._run_stamps = {float(t) for t, r in zip(self.db.stamps, self.db.runs) if r == self.run}

    @classmethod
    def open(cls, teacher: Embedder, student: Embedder, cfg: NodeConfig, frame_id: str = "map") -> "MapBuilder":
        """A builder for ``cfg.map.path``: appends to the existing map there when ``cfg.map.resume`` (it must
        have been built with the same two models, else :class:`MapCompatibilityError`), else starts empty."""
        db = None
        path = Path(cfg.map.path) if cfg.map.path else None
        if cfg.map.resume and path is not None and (path.exists() or path.with_name(f"{path.name}.bak").exists()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                db = PlaceDatabase.load(path, expect={TEACHER_SPACE: teacher.sha256, STUDENT_SPACE: student.sha256})
        return cls(teacher, student, db, cfg.index, cfg.matcher, cfg.map.run, frame_id)

    def add_keyframe(self, stamp: float, pose: np.ndarray, image: np.ndarray, cloud: np.ndarray,
                     frame_id: str | None = None) -> KeyframeResult:
        """Embed one camera+LiDAR keyframe with both models, match it (teacher space, this run's recent
        keyframes excluded) and add it. ValueError (nothing added) for unusable inputs."""
        t0 = time.perf_counter()
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"keyframe pose must be a finite 4x4 transform, got {pose.shape}")
        if float(stamp) in self._run_stamps:
            raise DuplicateKeyframe(f"run {self.run!r} already has a keyframe at t={float(stamp):.6f} "
                                    "(the same data played again?)")
        teacher_desc = self.teacher(image=image, cloud=cloud)
        student_desc = self.student(image=image)
        match = self.matcher.match(teacher_desc, stamp, run=self.run)
        kf_id = self.db.add(stamp, pose, frame_id or self.frame_id, self.run,
                            {TEACHER_SPACE: teacher_desc, STUDENT_SPACE: student_desc})
        self._run_stamps.add(float(stamp))
        self.unsaved += 1
        return KeyframeResult(kf_id, float(stamp), pose, match, time.perf_counter() - t0)

    def save(self, path: str | Path) -> Path:
        """Write the map atomically (see :meth:`PlaceDatabase.save`)."""
        out = self.db.save(path)
        self.unsaved = 0
        return out
