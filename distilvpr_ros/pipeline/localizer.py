"""Camera-only place recognition: the student's descriptor matched against the map's student space
(:class:`Localizer`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..mapping.database import MapError, PlaceDatabase
from ..mapping.matcher import MatcherConfig, MatchResult, PlaceMatcher
from .embedder import Embedder
from .image_quality import ImageQualityConfig, check_quality


@dataclass
class LocalizationResult:
    match: MatchResult
    descriptor: np.ndarray
    seconds: float


class Localizer:
    """Camera-only place recognition: the student's descriptor matched against the map's student space."""

    def __init__(self, student: Embedder, db: PlaceDatabase, matcher: MatcherConfig | None = None,
                 run: str | None = None, quality: ImageQualityConfig | None = None) -> None:
        if student.kind not in db.spaces:
            raise MapError(None, f"map has no {student.kind!r} space (has {sorted(db.spaces)})")
        self.student, self.db, self.run = student, db, run or None
        self.quality = quality or ImageQualityConfig()
        self.matcher = PlaceMatcher(db, student.kind, matcher)
        db.index(student.kind)  # build the index now, not at the first query

    @classmethod
    def load(cls, student: Embedder, map_path: str | Path, matcher: MatcherConfig | None = None,
             run: str | None = None, quality: ImageQualityConfig | None = None) -> "Localizer":
        """Load ``map_path`` refusing a map whose student space was built with another model
        (:class:`MapCompatibilityError`) or that is corrupt (:class:`MapError`)."""
        if not str(map_path):
            raise MapError(None, "map.path is not set")
        db = PlaceDatabase.load(map_path, expect={student.kind: student.sha256})
        return cls(student, db, matcher, run, quality)

    def localize(self, stamp: float, image: np.ndarray) -> LocalizationResult:
        """Match one camera frame. ValueError for an unusable image (:class:`LowQualityImage` for one below
        the quality gate: nothing is matched)."""
        t0 = time.perf_counter()
        if image is not None and np.ndim(image) == 3 and np.size(image):
            check_quality(np.asarray(image), self.quality)
        desc = self.student(image=image)
        match = self.matcher.match(desc, stamp, run=self.run)
        return LocalizationResult(match, desc, time.perf_counter() - t0)
