"""Scores of verified place matches (numpy only): precision and recall before and after geometric verification,
the metric pose error of verified matches, and the re-ranking's effect on Recall@1.

How queries are counted (one query = one camera frame; ``truth[i]``: the map keyframe ids within the
correct radius of query i, e.g. :func:`~.replay_metrics.positives`; a query "has a match" when it has one)
    * **before**: the descriptor matcher's decision. Accepted and its top-1 keyframe in ``truth`` = correct.
    * **after**: the verified decision. Accepted (verified) and the verified keyframe in ``truth`` = correct.
      ``metric_correct`` additionally needs the recovered pose within ``pose_ok_m`` and ``pose_ok_deg`` of the
      ground truth.
    * ``precision`` = correct / accepted (NaN when nothing was accepted; the counts are given beside),
      ``recall`` = correct / queries with a match.
    * ``recall@1`` before: the descriptor's top-1 is in ``truth``; after re-ranking: the verified keyframe when
      one was accepted, else the descriptor's top-1; over queries with a match.
    * pose error: over the accepted (verified) queries with a ground-truth pose, translation (3D, m) and rotation
      (deg) between the recovered base pose and the ground truth, median and 90th percentile.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

#: Keys every verified-match score holds (flattened names used in tables and summary.json).
VERIFIED_KEYS = ("queries", "queries_with_match", "before.accepted", "before.precision", "before.recall",
                 "after.accepted", "after.precision", "after.recall", "after.metric_precision",
                 "recall@1.before", "recall@1.after", "pose_error.translation_m_median",
                 "pose_error.translation_m_p90", "pose_error.rotation_deg_median", "pose_error.rotation_deg_p90")


def pose_errors(estimated: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors (Q,) between (Q, 4, 4) estimated and true poses."""
    est = np.asarray(estimated, dtype=np.float64).reshape(-1, 4, 4)
    gt = np.asarray(truth, dtype=np.float64).reshape(-1, 4, 4)
    if not len(est):
        return np.zeros(0), np.zeros(0)
    trans = np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1)
    rel = np.einsum("qji,qjk->qik", gt[:, :3, :3], est[:, :3, :3])  # R_gt^T R_est
    rot = np.degrees(Rotation.from_matrix(rel).magnitude())
    return trans, rot


def error_summary(trans: np.ndarray, rot: np.ndarray) -> dict[str, Any]:
    """Median and 90th percentile of translation / rotation errors (NaN when there are none)."""
    trans, rot = np.asarray(trans, float), np.asarray(rot, float)

    def pct(x, q):
        return float(np.percentile(x, q)) if len(x) else float("nan")

    return {"count": int(len(trans)), "translation_m_median": pct(trans, 50), "translation_m_p90": pct(trans, 90),
            "rotation_deg_median": pct(rot, 50), "rotation_deg_p90": pct(rot, 90)}


def _decision(accepted: np.ndarray, ids: np.ndarray, truth: Sequence[np.ndarray], has_match: np.ndarray) -> dict:
    correct = np.array([a and i >= 0 and i in set(t.tolist()) for a, i, t in zip(accepted, ids, truth)], bool)
    n_acc, n_ok, n_match = int(accepted.sum()), int(correct.sum()), int(has_match.sum())
    return {"accepted": n_acc, "correct": n_ok, "wrong": n_acc - n_ok,
            "precision": n_ok / n_acc if n_acc else float("nan"),
            "recall": n_ok / n_match if n_match else float("nan")}, correct


def score_verified_matches(truth: Sequence[np.ndarray], top1_before: np.ndarray, accepted_before: np.ndarray,
                           verified_ids: np.ndarray, verified: np.ndarray, verified_poses: np.ndarray | None = None,
                           true_poses: np.ndarray | None = None, pose_ok_m: float = 1.0,
                           pose_ok_deg: float = 5.0) -> dict[str, Any]:
    """Scores of one query stream (module doc).

    ``top1_before``/``accepted_before``: the descriptor matcher's top-1 keyframe id (-1: none) and decision;
    ``verified_ids``/``verified``: the keyframe verification accepted (-1: none) and whether it did;
    ``verified_poses``/``true_poses``: (Q, 4, 4) recovered and ground-truth base poses (NaN rows where unknown).
    """
    q = len(truth)
    top1_before = np.asarray(top1_before, np.int64).reshape(q)
    accepted_before = np.asarray(accepted_before, bool).reshape(q)
    verified_ids = np.asarray(verified_ids, np.int64).reshape(q)
    verified = np.asarray(verified, bool).reshape(q)
    has_match = np.array([len(t) > 0 for t in truth], bool)
    before, _ = _decision(accepted_before, top1_before, truth, has_match)
    after, after_correct = _decision(verified, verified_ids, truth, has_match)

    errors = error_summary(np.zeros(0), np.zeros(0))
    after["metric_correct"], after["metric_precision"] = 0, float("nan")
    if verified_poses is not None and true_poses is not None:
        est = np.asarray(verified_poses, float).reshape(q, 4, 4)
        gt = np.asarray(true_poses, float).reshape(q, 4, 4)
        known = verified & np.isfinite(est).all(axis=(1, 2)) & np.isfinite(gt).all(axis=(1, 2))
        trans, rot = pose_errors(est[known], gt[known])
        errors = error_summary(trans, rot)
        ok = np.zeros(q, bool)
        ok[known] = (trans <= pose_ok_m) & (rot <= pose_ok_deg)
        after["metric_correct"] = int((ok & after_correct).sum())
        after["metric_precision"] = after["metric_correct"] / int(known.sum()) if known.any() else float("nan")

    reranked = np.where(verified & (verified_ids >= 0), verified_ids, top1_before)

    def r1(ids):
        hits = [i >= 0 and i in set(t.tolist()) for i, t, m in zip(ids, truth, has_match) if m]
        return float(np.mean(hits)) if hits else float("nan")

    r_before, r_after = r1(top1_before), r1(reranked)
    return {"queries": q, "queries_with_match": int(has_match.sum()), "before": before, "after": after,
            "recall@1": {"before": r_before, "after": r_after, "delta": r_after - r_before},
            "pose_error": errors, "pose_ok_m": float(pose_ok_m), "pose_ok_deg": float(pose_ok_deg)}


def flatten_scores(scores: dict[str, Any]) -> dict[str, Any]:
    """``{"before.precision": ..., ...}``: the nested score as one table row (:data:`VERIFIED_KEYS` and more)."""
    out: dict[str, Any] = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
