"""Turn database searches into place matches and loop-closure candidates (no ROS here).

For each query keyframe (descriptor in the matcher's embedding space + stamp), :meth:`PlaceMatcher.match`:

1. **Temporal exclusion.** Database keyframes with ``|t_query - t_db| < exclude_recent_s`` are ignored
   (querying a map that is still being built from the same run; LIO-SAM rejects pairs closer than its
   ``historyKeyframeSearchTimeDiff`` = 30 s anyway). When the query's ``run`` is given, only keyframes
   of that run are excluded (runs recorded at overlapping clock times, e.g. synthetic runs all starting
   at 0, do not hide each other). The search over-fetches by the number of excluded keyframes, so with
   exact search the ``top_k`` survivors are the true top-k of the rest.
2. **Candidates.** The ``top_k`` remaining keyframes in rank order (best first), whatever their score;
   ``best`` is the first one.
3. **Threshold.** The best score must be ``>= min_score``. With ``max_distance_ratio < 1`` the best match must
   also be clearly better than the best candidate of a *distinct* place (farther than ``same_place_radius_m``
   from the best): the ratio of their descriptor distances ``sqrt(2 - 2 s)`` (Lowe's ratio test) must be at
   most ``max_distance_ratio``. A frame that resembles many places equally (noise, a blank wall) is no match.
   Only the ``ip`` metric on unit descriptors (the nodes' spaces) is supported.
4. **Sequence consistency.** The last ``sequence_length`` query frames (this one included) must *all*
   have a best match above ``min_score``, and every two consecutive ones must agree: their database
   keyframes are within ``sequence_radius_m`` of each other (planar distance between map positions)
   **or**, when ``sequence_max_id_gap > 0``, their keyframe ids differ by at most that gap. A single
   frame matching somewhere else (an isolated false positive) therefore cannot be accepted, and one
   bad frame inside a run blocks acceptance for the next ``sequence_length - 1`` frames. With
   ``sequence_length = 1`` this step is off. A query stamp earlier than the previous one (a replay
   restarting) clears the history.
5. **De-duplication.** An accepted match emits ``loop_closure = (t_query, t_match)`` (seconds, the
   LIO-SAM / LVI-SAM ``[t_cur, t_prev]`` contract) unless a loop closure was already emitted less than
   ``min_interval_s`` ago (query time) to a database keyframe within ``same_place_radius_m`` of this
   match. A de-duplicated match stays ``accepted`` (it is still a valid place match for relocalisation);
   only ``loop_closure`` is ``None`` and ``reason`` says why.

Covariance of a match (6x6, ROS order x, y, z, rot_x, rot_y, rot_z, row-major, diagonal): the matched
keyframe's pose is reported with ``sigma_xy = sigma_z = cov_sigma_xy_m + cov_sigma_xy_slope_m * (1 - s)``
for score ``s`` (capped at 1, so it grows monotonically as the score falls; for the ``l2`` metric
``1 - s = 1 + distance``) and ``sigma_roll = sigma_pitch = sigma_yaw = cov_sigma_rot_rad``: place
recognition says where the robot is, not which way it faces relative to the keyframe.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from pydantic import Field
from scipy.spatial.transform import Rotation

from ..config import Section
from ..data.geometry import yaw_of
from .database import PlaceDatabase


class MatcherConfig(Section):
    """Place-matching safety checks (module docstring of ``distilvpr_ros.mapping.matcher``).

    Every bound is finite: a score threshold outside the scores a map can give (cosine similarity in
    [-1, 1] for the nodes' ``ip`` spaces, minus the distance in [-2, 0] for unit descriptors in ``l2``
    spaces) would accept every frame or none.
    """

    top_k: int = Field(5, ge=1, le=100, description="candidates reported per query, best first")
    min_score: float = Field(
        0.5, ge=-2.0, le=1.0,
        description="similarity threshold on the best match (calibrate on validation, e.g. at 100% precision)")
    exclude_recent_s: float = Field(
        30.0, ge=0.0, le=1.0e9, description="ignore database keyframes with |t_query - t_db| below this (s)")
    sequence_length: int = Field(
        3, ge=1, le=100, description="accept only when this many consecutive query frames agree (1 = off)")
    sequence_radius_m: float = Field(
        10.0, gt=0.0, le=1000.0, description="consecutive best matches agree within this planar distance (m)")
    sequence_max_id_gap: int = Field(
        0, ge=0, le=100000, description="... or when their keyframe ids differ by at most this (0 = distance only)")
    min_interval_s: float = Field(
        5.0, ge=0.0, le=86400.0, description="at most one loop closure per place within this query time (s)")
    same_place_radius_m: float = Field(
        10.0, gt=0.0, le=1000.0,
        description="matches within this distance (m) count as the same place for de-duplication")
    max_distance_ratio: float = Field(
        1.0, gt=0.0, le=1.0, description="best / best-distinct-place descriptor distance must be at most this "
                                         "(Lowe's ratio test; 1 = off)")
    cov_sigma_xy_m: float = Field(1.0, gt=0.0, le=1000.0, description="position sigma (m) at score 1")
    cov_sigma_xy_slope_m: float = Field(
        20.0, ge=0.0, le=1000.0, description="extra position sigma (m) per unit of 1 - score")
    cov_sigma_rot_rad: float = Field(math.pi, gt=0.0, le=2 * math.pi, description="roll/pitch/yaw sigma (rad)")


class Candidate(NamedTuple):
    id: int
    score: float
    stamp: float
    pose: np.ndarray  # (7,) x, y, z, qx, qy, qz, qw of the database keyframe


@dataclass
class MatchResult:
    stamp: float
    accepted: bool
    reason: str  # why not accepted, or why an accepted match emitted no loop closure; "" otherwise
    candidates: list[Candidate] = field(default_factory=list)
    best: Candidate | None = None
    covariance: np.ndarray | None = None  # 6x6 for ``best``
    loop_closure: tuple[float, float] | None = None  # (t_query, t_match) seconds


class PlaceMatcher:
    """Stateful matcher of one query stream against one embedding space of a :class:`PlaceDatabase`."""

    def __init__(self, db: PlaceDatabase, space: str, cfg: MatcherConfig | None = None) -> None:
        if space not in db.spaces:
            raise KeyError(f"no embedding space {space!r} in the map (has {sorted(db.spaces)})")
        self.db, self.space, self.cfg = db, space, cfg or MatcherConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the sequence history and the emitted loop closures."""
        self._history: deque[Candidate | None] = deque(maxlen=self.cfg.sequence_length)
        self._last_stamp = -math.inf
        self._emitted: list[tuple[float, np.ndarray]] = []  # (t_query, match position)

    def covariance(self, score: float) -> np.ndarray:
        """6x6 pose covariance for a match of this score (module docstring)."""
        c = self.cfg
        sigma_xy = c.cov_sigma_xy_m + c.cov_sigma_xy_slope_m * (1.0 - min(float(score), 1.0))
        return np.diag([sigma_xy ** 2] * 3 + [c.cov_sigma_rot_rad ** 2] * 3)

    def _excluded(self, stamp: float, run: str | None) -> np.ndarray:
        """Keyframes inside the temporal exclusion window (of ``run`` only, when given)."""
        db = self.db
        excluded = np.abs(db.stamps - stamp) < self.cfg.exclude_recent_s
        if run is not None:
            for i in np.flatnonzero(excluded):
                excluded[i] = db.meta(int(i)).run == run
        return excluded

    def candidates(self, query_desc: np.ndarray, stamp: float, run: str | None = None) -> list[Candidate]:
        """Top-k database keyframes outside the temporal exclusion window, best first (no state change)."""
        db, k = self.db, self.cfg.top_k
        if len(db) == 0:
            return []
        excluded = self._excluded(stamp, run)
        n_fetch = min(len(db), k + int(excluded.sum()))
        scores, ids = db.search(self.space, np.asarray(query_desc, dtype=np.float32).reshape(1, -1), n_fetch)
        keep = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and not excluded[i]][:k]
        return [Candidate(i, s, float(db.stamps[i]), db.poses[i].copy()) for i, s in keep]

    def near(self, world_T_base: np.ndarray, n: int, radius_m: float, max_deg: float, query_desc: np.ndarray,
             stamp: float, run: str | None = None) -> list[Candidate]:
        """The ``n`` keyframes nearest to a pose (planar distance <= ``radius_m``, heading within ``max_deg``),
        outside the exclusion window, nearest first, scored by their descriptor similarity to ``query_desc`` (as
        the search scores it); no state change."""
        db = self.db
        if n <= 0 or len(db) == 0:
            return []
        dist = np.hypot(*(db.positions - np.asarray(world_T_base)[:2, 3]).T)
        ids = np.flatnonzero((dist <= radius_m) & ~self._excluded(stamp, run))  # headings of these only
        rot = Rotation.from_quat(db.poses[ids, 3:7]).as_matrix().reshape(-1, 3, 3)
        turn = np.abs((np.arctan2(rot[:, 1, 0], rot[:, 0, 0]) - yaw_of(world_T_base) + np.pi) % (2 * np.pi) - np.pi)
        ids = ids[np.degrees(turn) <= max_deg]
        ids = ids[np.argsort(dist[ids], kind="stable")][:n]
        scores = db.scores(self.space, query_desc, ids)
        return [Candidate(int(i), float(s), float(db.stamps[i]), db.poses[i].copy()) for i, s in zip(ids, scores)]

    def match(self, query_desc: np.ndarray, stamp: float, run: str | None = None) -> MatchResult:
        """Match one query frame (``run``: its run, to exclude only that run's recent keyframes) and update
        the sequence / de-duplication state."""
        stamp = float(stamp)
        if stamp < self._last_stamp:
            self._history.clear()
        self._last_stamp = stamp
        cands = self.candidates(query_desc, stamp, run)
        best = cands[0] if cands else None
        passes = best is not None and best.score >= self.cfg.min_score
        self._history.append(best if passes else None)
        result = MatchResult(stamp, False, "", cands, best, None if best is None else self.covariance(best.score))
        if best is None:
            result.reason = ("empty map" if len(self.db) == 0
                             else f"no database keyframe outside the {self.cfg.exclude_recent_s:g} s exclusion window")
        elif not passes:
            result.reason = f"best score {best.score:.3f} < min_score {self.cfg.min_score:g}"
        else:
            result.reason = self._ambiguity(cands) or self._sequence_problem()
        if result.reason:
            return result
        result.accepted = True
        result.reason = self._duplicate_of(best, stamp)
        if not result.reason:
            result.loop_closure = (stamp, best.stamp)
            self._emitted.append((stamp, best.pose[:2].copy()))
        return result

    def withdraw(self, result: MatchResult) -> None:
        """Forget the loop closure ``result`` emitted (a verifier rejected it), so that it does not suppress a
        later loop closure to the same place."""
        if result.loop_closure is not None:
            t = result.loop_closure[0]
            self._emitted = [(tq, p) for tq, p in self._emitted if tq != t]

    def _ambiguity(self, cands: list[Candidate]) -> str:
        """'' when the best candidate passes the ratio test against the best distinct place (or the test is
        off, or no distinct place is among the candidates), else the ratio it got."""
        limit = self.cfg.max_distance_ratio
        if limit >= 1.0:
            return ""
        best = cands[0]
        for c in cands[1:]:
            apart = float(np.hypot(*(c.pose[:2] - best.pose[:2])))
            if apart > self.cfg.same_place_radius_m:
                d_best = math.sqrt(max(2.0 - 2.0 * best.score, 0.0))
                ratio = d_best / max(math.sqrt(max(2.0 - 2.0 * c.score, 0.0)), 1e-12)
                if ratio > limit:
                    return (f"ambiguous: keyframe {c.id}, {apart:.0f} m away, scores {c.score:.3f} vs {best.score:.3f} "
                            f"(distance ratio {ratio:.3f} > max_distance_ratio {limit:g})")
                break
        return ""

    def _sequence_problem(self) -> str:
        """'' when the last ``sequence_length`` best matches agree, else what disagrees."""
        n, hist = self.cfg.sequence_length, list(self._history)
        matched = sum(c is not None for c in hist)
        if len(hist) < n or matched < n:
            return f"sequence: {matched} of the last {n} frames have a match above min_score"
        for a, b in zip(hist, hist[1:]):
            dist = float(np.hypot(*(b.pose[:2] - a.pose[:2])))
            gap, max_gap = abs(b.id - a.id), self.cfg.sequence_max_id_gap
            if dist > self.cfg.sequence_radius_m and not (max_gap > 0 and gap <= max_gap):
                return (f"sequence: consecutive matches {a.id} and {b.id} are {dist:.1f} m apart "
                        f"(> {self.cfg.sequence_radius_m:g} m) and {gap} keyframes apart")
        return ""

    def _duplicate_of(self, best: Candidate, stamp: float) -> str:
        """'' when a loop closure to ``best`` may be emitted now, else why not (and forget stale ones)."""
        window = self.cfg.min_interval_s
        self._emitted = [(t, p) for t, p in self._emitted if abs(stamp - t) < window]
        for t, p in self._emitted:
            if float(np.hypot(*(best.pose[:2] - p))) <= self.cfg.same_place_radius_m:
                return (f"loop closure suppressed: same place as the one emitted {stamp - t:.2f} s ago "
                        f"(min_interval_s {window:g})")
        return ""
