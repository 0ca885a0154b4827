"""Place-recognition metrics, with exactly one definition each.

Retrieval (PointNetVLAD / DistilVPR protocol)
    For every query with at least one true match in the database (queries without one are skipped),
    a hit at N means one of the N most similar database entries is a true match. Recall@1% uses
    N = max(1, round(|database| / 100)). Cross-run evaluation averages over ordered run pairs (AR@N).

Precision/recall over a similarity threshold (loop closure, VPR-Bench)
    Each query proposes its top-1 match with a score. At threshold τ a query is *accepted* when its
    score ≥ τ. Accepted and correct = TP; accepted and wrong = FP; every query that has a true match
    but is not a TP counts towards the recall denominator (so recall = TP / #queries-with-a-match),
    precision = TP / (TP + FP) (1 when nothing is accepted). Queries without any true match can only
    be FP or TN. AUC is the area under the precision-recall curve (trapezoids over recall, the curve
    starting at recall 0 with the precision of the highest threshold); max F1 and recall at 100 %
    precision are taken over all thresholds.

Chance level
    The Recall@N of a ranking drawn uniformly at random, in closed form: with T true matches among D
    database entries, P(a true match among the first N) = 1 - C(D - T, N) / C(D, N) (hypergeometric);
    Recall@1 chance is T / D. Averaged like the recalls (over queries, then over run pairs).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

RECALL_NS = (1, 5, 10, 20, 25)


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar columns per row, best first (stable for ties)."""
    k = min(k, similarity.shape[1])
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def recall_at_n(similarity: np.ndarray, true_matches: Sequence[Iterable[int]],
                ns: Sequence[int] = RECALL_NS) -> dict[str, float]:
    """Recall@N and Recall@1% for a query × database similarity matrix.

    Returns ``{"recall@1": ..., "recall@5": ..., "recall@1%": ..., "num_queries": ...}``; recalls
    are NaN when no query has a true match.
    """
    similarity = np.asarray(similarity)
    n_db = similarity.shape[1]
    one_pct = max(1, int(round(n_db / 100)))
    true_matches = [list(m) for m in true_matches]
    evaluable = [i for i, m in enumerate(true_matches) if m]
    out: dict[str, float] = {"num_queries": float(len(evaluable))}
    if not evaluable or n_db == 0:
        for n in ns:
            out[f"recall@{n}"] = float("nan")
        out["recall@1%"] = float("nan")
        return out
    kmax = max(max(ns), one_pct)
    ranked = top_k(similarity[evaluable], kmax)
    truth = [set(int(j) for j in true_matches[i]) for i in evaluable]
    first_hit = np.array([next((r for r, j in enumerate(row) if j in t), kmax) for row, t in zip(ranked, truth)])
    for n in ns:
        out[f"recall@{n}"] = float(np.mean(first_hit < n))
    out["recall@1%"] = float(np.mean(first_hit < one_pct))
    return out


def chance_recall_at_n(num_true, num_database: int, n: int = 1) -> np.ndarray:
    """Chance Recall@n per query (module doc): ``1 - C(D - T, n) / C(D, n)``, ``T = num_true``, ``D = num_database``."""
    t = np.asarray(num_true, dtype=float)
    if np.any(t < 0) or np.any(t > num_database):
        raise ValueError("num_true must lie in [0, num_database]")
    miss = np.ones_like(t)
    for k in range(min(n, num_database)):  # P(no true match among the first n) as a product of draws
        miss = miss * np.clip((num_database - t - k) / (num_database - k), 0.0, 1.0)
    return 1.0 - miss


def average_recalls(per_pair: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each recall key over pairs that had evaluable queries (AR@N)."""
    keys = [k for k in per_pair[0] if k.startswith("recall@")] if per_pair else []
    out = {}
    for k in keys:
        vals = np.array([p[k] for p in per_pair], dtype=float)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    out["num_pairs"] = float(sum(1 for p in per_pair if p["num_queries"] > 0))
    return out


def precision_recall(scores: np.ndarray, correct: np.ndarray, has_match: np.ndarray) -> dict[str, np.ndarray | float]:
    """PR curve, AUC, max F1 and recall at 100 % precision for top-1 proposals (see module doc).

    ``scores``: top-1 similarity per query (higher = more confident); ``correct``: the top-1 is a
    true match; ``has_match``: the query has any true match.
    """
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    has_match = np.asarray(has_match, dtype=bool)
    if np.any(correct & ~has_match):
        raise ValueError("a query cannot be correct without having a true match")
    n_pos = int(has_match.sum())
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    fp = np.cumsum(~correct[order])
    # One operating point per distinct score: accept everything with score >= that value.
    last = np.r_[np.flatnonzero(np.diff(scores[order]) != 0), len(order) - 1] if len(order) else np.zeros(0, int)
    tp, fp, thr = tp[last], fp[last], scores[order][last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_pos if n_pos else np.zeros_like(tp, dtype=float)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    r_curve = np.r_[0.0, recall]
    p_curve = np.r_[precision[0] if len(precision) else 1.0, precision]
    auc = float(np.trapezoid(p_curve, r_curve)) if len(recall) else 0.0
    perfect = recall[precision >= 1.0]
    return {
        "precision": precision,
        "recall": recall,
        "thresholds": thr,
        "auc": auc,
        "max_f1": float(f1.max()) if len(f1) else 0.0,
        "recall@100p": float(perfect.max()) if len(perfect) else 0.0,
    }


def similarity_matrix_metrics(similarity: np.ndarray, true_matches: Sequence[Iterable[int]],
                              ns: Sequence[int] = (1, 5)) -> dict[str, float]:
    """VPR-Bench style summary of a query × reference similarity matrix: R@N, PR-AUC, max F1."""
    similarity = np.asarray(similarity, dtype=float)
    truth = [sorted(set(int(j) for j in m)) for m in true_matches]
    rec = recall_at_n(similarity, truth, ns)
    pr = top1_precision_recall(similarity, truth)
    out = {k: v for k, v in rec.items() if k.startswith("recall@") and not k.endswith("%")}
    out.update(pr_auc=pr["auc"], max_f1=pr["max_f1"], **{"recall@100p": pr["recall@100p"]})
    return out


def top1_precision_recall(similarity: np.ndarray,
                          true_matches: Sequence[Iterable[int]]) -> dict[str, np.ndarray | float]:
    """:func:`precision_recall` of the top-1 proposals of a query × reference similarity matrix.

    Each query proposes its most similar reference, scored by that similarity.
    """
    similarity = np.asarray(similarity, dtype=float)
    truth = [set(int(j) for j in m) for m in true_matches]
    best = top_k(similarity, 1)[:, 0]
    return precision_recall(
        similarity[np.arange(len(best)), best],
        np.array([b in t for b, t in zip(best, truth)], dtype=bool),
        np.array([len(t) > 0 for t in truth], dtype=bool),
    )
