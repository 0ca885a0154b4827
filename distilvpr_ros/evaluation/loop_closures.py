"""Score published loop closures against poses: precision, recall and how far off each one was.

A published loop closure ``(t_query, t_match)`` is **correct** when the positions at the two stamps are
within ``correct_m`` of each other (planar). Positions come from ``(stamps, positions)`` (e.g. the map's
keyframes, or a run's ground-truth poses), taken at the nearest stamp (a stamp farther than
``max_stamp_gap_s`` from every pose is *unknown* and counted apart, never as correct).

Recall is over the query keyframes that *could* have closed a loop: a keyframe has a true loop when an
earlier keyframe at least ``exclude_recent_s`` older lies within ``correct_m``. ``recall`` is the share of
those that published at least one correct loop closure; it is ``None`` (not 0) when no keyframe could.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def score_loop_closures(loops: Sequence[Sequence[float]], stamps: np.ndarray, positions: np.ndarray,
                        correct_m: float = 10.0, exclude_recent_s: float = 30.0,
                        max_stamp_gap_s: float = 0.05) -> dict[str, Any]:
    """Precision / recall of ``loops`` (``[t_query, t_match]`` each) against ``positions`` (N x 2 or 3)
    at ``stamps`` (N,). Returns counts, precision, recall and the per-loop distances (m)."""
    stamps = np.asarray(stamps, dtype=np.float64)
    xy = np.asarray(positions, dtype=np.float64)[:, :2]
    order = np.argsort(stamps)
    stamps, xy = stamps[order], xy[order]

    def at(t: float) -> np.ndarray | None:
        if not len(stamps):
            return None
        i = int(np.clip(np.searchsorted(stamps, t), 1, len(stamps) - 1)) if len(stamps) > 1 else 0
        j = i - 1 if len(stamps) > 1 and abs(stamps[i - 1] - t) < abs(stamps[i] - t) else i
        return xy[j] if abs(stamps[j] - t) <= max_stamp_gap_s else None

    distances, unknown, correct_queries = [], 0, set()
    for t_query, t_match in loops:
        a, b = at(float(t_query)), at(float(t_match))
        if a is None or b is None:
            unknown += 1
            continue
        d = float(np.hypot(*(a - b)))
        distances.append(d)
        if d <= correct_m:
            correct_queries.add(round(float(t_query), 6))
    tp = int(sum(d <= correct_m for d in distances))
    fp = len(distances) - tp
    could = 0  # keyframes with an earlier keyframe, outside the exclusion window, within correct_m
    for i in range(len(stamps)):
        earlier = stamps < stamps[i] - exclude_recent_s
        if earlier.any() and (np.hypot(*(xy[earlier] - xy[i]).T) <= correct_m).any():
            could += 1
    return {
        "published": len(loops), "scored": len(distances), "unknown_stamps": unknown,
        "correct": tp, "wrong": fp,
        "precision": tp / len(distances) if distances else None,
        "possible": could, "recall": (len(correct_queries) / could) if could else None,
        "correct_m": correct_m, "distances_m": distances,
    }
