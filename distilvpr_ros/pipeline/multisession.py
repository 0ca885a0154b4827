"""Multi-session maps: the transform between two maps' frames from verified cross-session matches, and the
merge of two saved maps into one frame (``distilvpr merge-maps``).

Alignment (:func:`estimate_alignment`, map ``b`` into map ``a``'s frame):

1. every keyframe of ``b`` is searched in ``a``'s ``space`` (teacher by default): its ``top_k`` most similar
   keyframes with a score of at least ``min_score`` are candidate pairs; the ``max_pairs`` best-scoring
   pairs are kept;
2. each pair is verified by LiDAR registration (GICP, the verification's
   :class:`~distilvpr_ros.verification.lidar.LidarVerifier` with its acceptance tests) of the two keyframes'
   stored points, tried from every yaw in ``yaw_seeds_deg`` (the two sessions' frames are unrelated, so
   there is no odometry seed; the best-fitting accepted registration counts). A verified pair gives one
   estimate ``world_a_T_world_b = pose_a @ a_base_T_b_base @ inv(pose_b)``;
3. robust average: the estimate with the most others within ``inlier_m`` / ``inlier_deg`` (consensus), then
   the mean translation and rotation (chordal mean) of its inliers. Fewer than ``min_anchors`` inliers:
   :class:`AlignmentError`, nothing is merged.

:func:`merge_maps` loads both maps, checks their schemas (:func:`~distilvpr_ros.mapping.merge.check_same_spaces`),
aligns, merges (:func:`~distilvpr_ros.mapping.merge.merge_databases`) and saves atomically.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field
from scipy.spatial.transform import Rotation

from ..config import Section
from ..data.calibration import CameraCalibration
from ..data.geometry import invert
from ..mapping.database import PlaceDatabase
from ..mapping.merge import check_same_spaces, merge_databases, pose_matrices
from ..verification.config import LidarVerificationConfig
from ..verification.lidar import LidarVerifier, yaw_transform
from .config import TEACHER_SPACE


class AlignmentConfig(Section):
    """How two sessions' maps are aligned (module docstring)."""

    space: str = Field(TEACHER_SPACE, description="embedding space whose matches are verified")
    top_k: int = Field(3, ge=1, le=50, description="candidates per keyframe of the second map")
    min_score: float = Field(-1.0, ge=-2.0, le=1.0, description="candidates need at least this similarity")
    max_pairs: int = Field(60, ge=1, le=100000, description="best-scoring pairs verified at most")
    yaw_seeds_deg: list[float] = Field([0.0, 90.0, 180.0, 270.0], min_length=1, max_length=36,
                                       description="initial yaws of the registration (deg)")
    inlier_m: float = Field(1.0, gt=0, le=100, description="two estimates agree within this translation (m)")
    inlier_deg: float = Field(3.0, gt=0, le=180, description="... and this rotation (deg)")
    min_anchors: int = Field(3, ge=1, le=10000, description="agreeing verified pairs needed to align")


class AlignmentError(ValueError):
    """Too few verified cross-session matches agree on a transform: the sessions were not merged."""


@dataclass
class Alignment:
    """``a_T_b`` (``world_a_T_world_b``) and how it was found."""

    transform: np.ndarray | None
    pairs: int = 0  # pairs registered
    verified: int = 0  # pairs whose registration was accepted
    anchors: list[tuple[int, int]] = field(default_factory=list)  # (a id, b id) of the consensus inliers
    spread_m: float = float("nan")  # RMS translation of the inliers' estimates about the mean
    seconds: float = 0.0
    estimates: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))  # every verified pair's

    def as_dict(self) -> dict:
        return {"transform": None if self.transform is None else self.transform.tolist(), "pairs": self.pairs,
                "verified": self.verified, "anchors": len(self.anchors), "anchor_pairs": self.anchors,
                "spread_m": self.spread_m if np.isfinite(self.spread_m) else None, "seconds": round(self.seconds, 3)}


def _T_base_lidar(db: PlaceDatabase, run: str) -> np.ndarray:
    calib = db.calibration(run)
    return CameraCalibration.from_dict(calib).T_base_lidar if calib is not None else np.eye(4)


def candidate_pairs(a: PlaceDatabase, b: PlaceDatabase, cfg: AlignmentConfig) -> list[tuple[int, int, float]]:
    """``(a id, b id, score)`` of the best cross-map matches, best first (at most ``max_pairs``)."""
    if len(a) == 0 or len(b) == 0:
        return []
    scores, ids = a.search(cfg.space, b.descriptors(cfg.space), min(cfg.top_k, len(a)))
    pairs = [(int(i), q, float(s)) for q in range(len(b)) for s, i in zip(scores[q], ids[q])
             if i >= 0 and s >= cfg.min_score]
    pairs.sort(key=lambda p: -p[2])
    return pairs[:cfg.max_pairs]


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def robust_average(estimates: np.ndarray, inlier_m: float, inlier_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The consensus transform of (M, 4, 4) estimates and the mask of its inliers (module docstring)."""
    m = len(estimates)
    agree = np.zeros((m, m), bool)
    for i in range(m):
        for j in range(m):
            dt = np.linalg.norm(estimates[i, :3, 3] - estimates[j, :3, 3])
            agree[i, j] = dt <= inlier_m and _angle_deg(estimates[i, :3, :3].T @ estimates[j, :3, :3]) <= inlier_deg
    inliers = agree[int(np.argmax(agree.sum(1)))]
    T = np.eye(4)
    T[:3, :3] = Rotation.from_matrix(estimates[inliers, :3, :3]).mean().as_matrix()
    T[:3, 3] = estimates[inliers, :3, 3].mean(0)
    return T, inliers


def estimate_alignment(a: PlaceDatabase, b: PlaceDatabase, cfg: AlignmentConfig | None = None,
                       lidar: LidarVerificationConfig | None = None) -> Alignment:
    """``world_a_T_world_b`` from verified cross-session matches (module docstring); ``transform`` is None
    when fewer than ``min_anchors`` agree (see :func:`require_alignment`)."""
    cfg = cfg or AlignmentConfig()
    t0 = time.perf_counter()
    verifier = LidarVerifier(lidar)
    Pa, Pb = pose_matrices(a), pose_matrices(b)
    pairs = candidate_pairs(a, b, cfg)
    estimates, used = [], []
    for ia, ib in {(p[0], p[1]): None for p in pairs}:
        src, tgt = b.view(ib).points, a.view(ia).points
        if src is None or tgt is None or not len(src) or not len(tgt):
            continue
        best = None
        for yaw in cfg.yaw_seeds_deg:
            reg = verifier.register(src.astype(np.float64), tgt.astype(np.float64),
                                    initial=yaw_transform(np.deg2rad(yaw)))
            if reg.accepted and (best is None or reg.fitness < best.fitness):
                best = reg
        if best is None:
            continue
        rel = _T_base_lidar(a, a.runs[ia]) @ best.transform @ invert(_T_base_lidar(b, b.runs[ib]))
        estimates.append(Pa[ia] @ rel @ invert(Pb[ib]))
        used.append((ia, ib))
    out = Alignment(None, pairs=len(pairs), verified=len(estimates))
    if estimates:
        out.estimates = np.stack(estimates)
        T, inliers = robust_average(out.estimates, cfg.inlier_m, cfg.inlier_deg)
        out.anchors = [used[k] for k in np.flatnonzero(inliers)]
        out.spread_m = float(np.sqrt(np.mean(np.sum((out.estimates[inliers, :3, 3] - T[:3, 3]) ** 2, axis=1))))
        if len(out.anchors) >= cfg.min_anchors:
            out.transform = T
    out.seconds = time.perf_counter() - t0
    return out


def require_alignment(alignment: Alignment, cfg: AlignmentConfig) -> np.ndarray:
    """The alignment's transform, or :class:`AlignmentError` saying how many pairs were verified and agreed."""
    if alignment.transform is None:
        raise AlignmentError(f"only {len(alignment.anchors)} of {alignment.verified} verified cross-session matches "
                             f"({alignment.pairs} pairs tried) agree on a transform; {cfg.min_anchors} are needed. "
                             "Nothing was merged")
    return alignment.transform


def load_map(path: str | Path) -> PlaceDatabase:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a format 1 map: its keyframes have no views, alignment finds no anchor
        return PlaceDatabase.load(path)


def merge_maps(a_path: str | Path, b_path: str | Path, out_path: str | Path, cfg: AlignmentConfig | None = None,
               lidar: LidarVerificationConfig | None = None) -> dict:
    """Merge the map at ``b_path`` into the frame of the map at ``a_path`` and save it at ``out_path``
    (atomically; it may be ``a_path``). Returns a summary; :class:`AlignmentError` when the maps could not be
    aligned, :class:`~distilvpr_ros.mapping.errors.MapCompatibilityError` when their schemas differ."""
    cfg = cfg or AlignmentConfig()
    a, b = load_map(a_path), load_map(b_path)
    check_same_spaces(a, b, b_path)
    alignment = estimate_alignment(a, b, cfg, lidar)
    T = require_alignment(alignment, cfg)
    merged = merge_databases(a, b, T, b_path)
    merged.save(out_path)
    return {"map": str(out_path), "a": str(a_path), "b": str(b_path), "keyframes_a": len(a), "keyframes_b": len(b),
            "keyframes": len(merged), "runs": sorted(set(merged.runs)), "alignment": alignment.as_dict()}
