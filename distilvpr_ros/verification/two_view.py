"""Image-only (2D-2D) geometric verification and re-ranking: for datasets without depth (e.g. Corridor).

Two images are matched with :mod:`.features` (SIFT or ORB, mutual nearest neighbour + ratio test) and the
matches are fitted with a homography or a fundamental matrix by OpenCV's USAC (MAGSAC++); the inlier count
is the verification score. :func:`rerank_similarity` re-ranks each query's top-k references of a
similarity matrix by that score (ties: descriptor order) through :func:`.rerank.rerank`.

Defaults (ORB, ratio 0.9, homography) were picked by a small sweep on Corridor itself (see README): they
are a measurement of what 2D-2D re-ranking can add there, not settings tuned on held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from .features import FeatureExtractor, LocalFeatures, match_features
from .rerank import rerank


@dataclass(frozen=True)
class TwoViewConfig:
    features: Literal["sift", "orb"] = "orb"
    max_features: int = 2000
    ratio: float = 0.9  # Lowe ratio test
    model: Literal["homography", "fundamental"] = "homography"
    ransac_threshold_px: float = 3.0  # homography: reprojection error; fundamental: distance to the epipolar line
    ransac_iterations: int = 2000
    min_matches: int = 8  # fewer matches: 0 inliers, no fit
    min_inliers: int = 1  # a candidate with fewer inliers is "rejected" (ranked after the accepted ones)
    upright: bool = False  # describe keypoints at orientation 0 (see .features)

    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.features, self.max_features, self.upright)


@dataclass
class TwoViewResult:
    matches: int
    inliers: int
    accepted: bool
    reason: str

    @property
    def score(self) -> float:
        return float(self.inliers)


def two_view_features(a: LocalFeatures, b: LocalFeatures, cfg: TwoViewConfig = TwoViewConfig()) -> TwoViewResult:
    """Match two images' features and count the inliers of a robust homography / fundamental-matrix fit."""
    pairs = match_features(a, b, cfg.ratio)
    if len(pairs) < max(cfg.min_matches, 8 if cfg.model == "fundamental" else 4):
        return TwoViewResult(len(pairs), 0, False, f"too few matches ({len(pairs)})")
    pa, pb = a.uv[pairs[:, 0]], b.uv[pairs[:, 1]]
    try:
        if cfg.model == "homography":
            _, mask = cv2.findHomography(pa, pb, cv2.USAC_MAGSAC, cfg.ransac_threshold_px,
                                         maxIters=cfg.ransac_iterations, confidence=0.999)
        else:
            _, mask = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, cfg.ransac_threshold_px, 0.999,
                                             cfg.ransac_iterations)
    except cv2.error as err:  # degenerate configurations raise inside USAC
        return TwoViewResult(len(pairs), 0, False, f"{cfg.model} fit failed: {str(err).strip()[-80:]}")
    inliers = 0 if mask is None else int(np.count_nonzero(mask))
    ok = inliers >= cfg.min_inliers
    return TwoViewResult(len(pairs), inliers, ok, "ok" if ok else f"{inliers} inliers < {cfg.min_inliers}")


def two_view_inliers(img_a: np.ndarray, img_b: np.ndarray, cfg: TwoViewConfig = TwoViewConfig()) -> int:
    """RANSAC inliers between two RGB or grey images (0 for a missing, featureless or unrelated pair)."""
    ext = cfg.extractor()
    return two_view_features(ext.extract(img_a), ext.extract(img_b), cfg).inliers


def rerank_similarity(similarity: np.ndarray, query_features: Sequence[LocalFeatures],
                      ref_features: Sequence[LocalFeatures], top_k: int,
                      cfg: TwoViewConfig = TwoViewConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's ``top_k`` references by two-view inliers; ``(reranked similarity, inliers)``.

    The returned matrix keeps the new order per row: a verified candidate scores ``inliers + t`` with
    ``t`` in (0, 1) falling with its descriptor rank (the tie-break), every other reference scores -1. So
    R@N and top-1 precision/recall computed from it are those of the re-ranked lists, with the inlier
    count as the top-1 confidence. ``inliers`` is (queries, top_k) in descriptor order. ``top_k`` <= 0
    returns the similarity unchanged.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if top_k <= 0:
        return similarity, np.zeros((len(similarity), 0), np.int64)
    k = min(int(top_k), similarity.shape[1])
    out = np.full_like(similarity, -1.0)
    inliers = np.zeros((len(similarity), k), np.int64)
    for q, row in enumerate(similarity):
        order = np.argsort(-row, kind="stable")[:k]
        ranked = rerank(list(order), row[order], lambda r: two_view_features(query_features[q], ref_features[r], cfg))
        by_ref = {c.id: c.score for c in ranked.candidates}
        inliers[q] = [by_ref[r] for r in order]
        for new_rank, cand in enumerate(ranked.candidates):
            tie = (new_rank + 1) / (k + 1)  # in (0, 1), growing down the new order
            out[q, cand.id] = cand.score + 1.0 - tie if cand.accepted else -tie
    return out, inliers
