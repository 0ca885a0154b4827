"""Scores of a bag replayed through the localisation node (``distilvpr replay``); numpy only, no ROS.

``distilvpr_ros.ros.replay_localization`` fills a :class:`Recording` (what the player published, what the recorder
received, both with monotonic wall times); :func:`score_replay` turns it into metrics against the bag's
ground-truth poses and the map's keyframe poses; :func:`write_report` writes JSON, a markdown table and
plots.

How queries are counted (one query = one camera frame the player published; stamps are bag stamps)
    * **answered**: the node published ``place_candidates/scores`` for the query's stamp; otherwise the
      query is **dropped** (``dropped_frames``, whether the node's latest-frame slot or DDS dropped it).
      The retrieval and PR metrics below are over answered queries; drops are reported on their own.
    * **positives** of a query: map keyframes within ``correct_m`` (planar x/y distance) of the query's
      ground-truth position (the bag's poses interpolated to the query stamp), leaving out keyframes the
      node's temporal exclusion hides (same run, ``|t_kf - t_query| < exclude_recent_s``). A query
      "has a match" when it has a positive.
    * ``recall@1`` (and ``recall@N`` for N up to the node's ``top_k``): :func:`metrics.recall_at_n` over
      the answered queries with a match, on the candidates the node published.
    * PR curve, ``pr_auc``, ``max_f1``, ``recall@100p``: :func:`metrics.precision_recall` of the top-1
      candidate, its score as the threshold: accepted and within ``correct_m`` = TP, accepted and farther
      = FP, a query with a match not a TP = FN, a query without one and not accepted = TN.
    * ``accepted_precision`` / ``accepted_recall``: the same counting for the node's own decisions (a
      ``place_match`` message for the stamp = accepted; its pose within ``correct_m`` = correct).
    * ``match_translation_m_*`` / ``match_rotation_deg_*`` (median, p90): the pose each ``place_match`` carries
      against the query's ground-truth pose (translation in 3D; rotation when the match carries an orientation
      and ``query_poses`` are given): a keyframe's pose for an unverified node, the metric PnP pose for a
      verified one (:mod:`.verified_matches`).
    * ``verified_matches`` (when the node published ``place_candidates/inliers``, i.e. ran with verification):
      :func:`.verified_matches.score_verified_matches` over the answered queries, from what the node published:
      *before* = its descriptor decision (``descriptor_accepted``) and top-1 candidate, *after* = ``verified``
      and the candidate whose check accepted it; the verified poses are the ``place_match`` poses (metric),
      scored against ``query_poses``; ``recall@1.after`` is the re-ranked top-1.
    * ``loop_closures_correct`` / ``loop_closure_precision``: a published ``[t_query, t_match]`` is correct when
      the keyframe stamped ``t_match`` lies within ``correct_m`` of the query's ground-truth position
      (``map_stamps`` needed).
    * latency: receive time of the query's ``place_candidates/scores`` minus the publish time of its image
      (same machine, one monotonic clock); ``rate_hz``: answered queries per second over the span of their
      outputs; ``input_hz``: the same for the published images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import CORRECT_M
from ..data.geometry import make_pose
from .metrics import precision_recall, recall_at_n
from .verified_matches import error_summary, pose_errors, score_verified_matches

#: Metric keys every replay writes (``metrics.json``), in table order.
REPLAY_KEYS = ("frames", "recall@1", "pr_auc", "max_f1", "recall@100p", "accepted_precision", "accepted_recall",
               "latency_ms_p50", "latency_ms_p99", "rate_hz", "dropped_frames")
STAMP_TOLERANCE_S = 1e-6  # header stamps round-trip through (sec, nanosec)


@dataclass
class Recording:
    """What one replay published and received. Wall times are ``time.monotonic()`` seconds of one machine.

    ``scores`` holds the raw ``place_candidates/scores`` data (``[t_query, id_1, score_1, t_1, ...]``),
    ``matches`` the ``place_match`` stamp and position (and, optionally, its quaternion x y z w),
    ``loop_closures`` the ``[t_query, t_match]`` pairs, ``inliers`` the raw ``place_candidates/inliers`` data
    (``[t_query, descriptor_accepted, verified, id_1, inliers_1, check_1, ...]``, with verification),
    ``transforms`` the raw ``loop_closure/transform`` data,
    ``node`` the node's last ``/diagnostics`` values and ``node_rss_mb`` samples of its resident memory.
    """

    sent_stamps: np.ndarray
    sent_wall: np.ndarray
    scores: list[tuple[float, Sequence[float]]] = field(default_factory=list)  # (receive, data)
    matches: list[tuple] = field(default_factory=list)  # (receive, t, xyz[, quat xyzw])
    loop_closures: list[tuple[float, float, float]] = field(default_factory=list)  # (receive, t_query, t_match)
    inliers: list[tuple[float, Sequence[float]]] = field(default_factory=list)  # (receive, data)
    transforms: list[tuple[float, Sequence[float]]] = field(default_factory=list)  # (receive, data)
    node: dict[str, Any] = field(default_factory=dict)
    node_rss_mb: list[float] = field(default_factory=list)


def parse_scores(data: Sequence[float]) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``place_candidates/scores`` data → ``(t_query, ids, scores, keyframe stamps)`` in rank order."""
    data = np.asarray(data, dtype=np.float64)
    if len(data) < 1 or (len(data) - 1) % 3:
        raise ValueError(f"place_candidates/scores must hold 1 + 3k values, got {len(data)}")
    rows = data[1:].reshape(-1, 3)
    return float(data[0]), rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2]


def parse_inliers(data: Sequence[float]) -> tuple[float, bool, bool, np.ndarray, np.ndarray, np.ndarray]:
    """``place_candidates/inliers`` data → ``(t_query, descriptor_accepted, verified, ids, inliers, checks)``."""
    data = np.asarray(data, dtype=np.float64)
    if len(data) < 3 or (len(data) - 3) % 3:
        raise ValueError(f"place_candidates/inliers must hold 3 + 3k values, got {len(data)}")
    rows = data[3:].reshape(-1, 3)
    return float(data[0]), bool(data[1]), bool(data[2]), rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2]


def align(sent_stamps: np.ndarray, stamps: Sequence[float], tol: float = STAMP_TOLERANCE_S) -> np.ndarray:
    """Index into ``sent_stamps`` (sorted) of each stamp, -1 where none lies within ``tol``."""
    sent = np.asarray(sent_stamps, dtype=np.float64)
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    if not len(sent) or not len(stamps):
        return np.full(len(stamps), -1, dtype=np.int64)
    right = np.clip(np.searchsorted(sent, stamps), 0, len(sent) - 1)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(sent[left] - stamps) <= np.abs(sent[right] - stamps), left, right)
    return np.where(np.abs(sent[nearest] - stamps) <= tol, nearest, -1).astype(np.int64)


def positives(query_xy: np.ndarray, map_xy: np.ndarray, correct_m: float, query_stamps: np.ndarray | None = None,
              map_stamps: np.ndarray | None = None, map_runs: Sequence[str] | None = None, query_run: str | None = None,
              exclude_recent_s: float = 0.0) -> list[np.ndarray]:
    """Map keyframe ids within ``correct_m`` (planar) of each query, without those the node's temporal
    exclusion hides (keyframes of ``query_run`` closer than ``exclude_recent_s`` in time)."""
    query_xy = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
    map_xy = np.asarray(map_xy, dtype=np.float64).reshape(-1, 2)
    near = np.linalg.norm(query_xy[:, None, :] - map_xy[None, :, :], axis=2) <= correct_m
    if exclude_recent_s > 0 and map_runs is not None and query_stamps is not None and map_stamps is not None:
        same_run = np.array([r == query_run for r in map_runs], dtype=bool)
        recent = np.abs(np.asarray(query_stamps)[:, None] - np.asarray(map_stamps)[None, :]) < exclude_recent_s
        near &= ~(recent & same_run[None, :])
    return [np.flatnonzero(row) for row in near]


def _operating_point(pr: dict, threshold: float) -> tuple[float, float]:
    """Precision and recall of a :func:`precision_recall` result when accepting scores >= ``threshold``."""
    at = np.flatnonzero(pr["thresholds"] >= threshold)
    if not len(at):
        return 1.0, 0.0  # nothing accepted
    return float(pr["precision"][at[-1]]), float(pr["recall"][at[-1]])


def score_replay(rec: Recording, query_xy: np.ndarray, map_xy: np.ndarray, truth: Sequence[np.ndarray],
                 correct_m: float = CORRECT_M, query_poses: np.ndarray | None = None,
                 map_stamps: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of a replay (module docstring) and per-query details for plots.

    ``query_xy``: ground-truth planar position of each published frame (aligned with ``rec.sent_stamps``);
    ``map_xy``: planar position of each map keyframe (row = keyframe id); ``truth``: :func:`positives`;
    ``query_poses``: optional (Q, 4, 4) ground-truth poses of the published frames (for the match pose errors);
    ``map_stamps``: the keyframes' stamps (row = id; for scoring the published loop closures).
    Returns ``(metrics, details)``; ``details`` has per-query arrays (``answered``, ``top1``, ``top1_score``,
    ``top1_correct``, ``accepted``, ``accepted_correct``, ``latency_s``, ``has_match``).
    """
    n = len(rec.sent_stamps)
    query_xy = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
    map_xy = np.asarray(map_xy, dtype=np.float64).reshape(-1, 2)
    has_match = np.array([len(t) > 0 for t in truth], dtype=bool)

    # place_candidates/scores: answered queries, their candidates and the latency
    parsed = [(recv, *parse_scores(data)) for recv, data in rec.scores]
    idx = align(rec.sent_stamps, [p[1] for p in parsed])
    answered = np.zeros(n, dtype=bool)
    receive = np.full(n, np.nan)
    cand_ids: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    cand_scores: list[np.ndarray] = [np.zeros(0)] * n
    for i, (recv, _, ids, scores, _) in zip(idx, parsed):
        if i >= 0 and not answered[i]:
            answered[i], receive[i], cand_ids[i], cand_scores[i] = True, recv, ids, scores
    k = max((len(c) for c in cand_ids), default=0)
    top1 = np.array([c[0] if len(c) else -1 for c in cand_ids], dtype=np.int64)
    top1_score = np.array([s[0] if len(s) else -np.inf for s in cand_scores])
    top1_correct = np.array([t >= 0 and t in set(tr.tolist()) for t, tr in zip(top1, truth)], dtype=bool)

    # place_match: the node's accepted matches, correct when the matched pose is near the query
    accepted = np.zeros(n, dtype=bool)
    accepted_correct = np.zeros(n, dtype=bool)
    m_idx = align(rec.sent_stamps, [m[1] for m in rec.matches])
    trans_err, rot_err = [], []
    for i, m in zip(m_idx, rec.matches):
        if i >= 0:
            xyz = np.asarray(m[2], dtype=np.float64)
            accepted[i] = True
            near = np.hypot(*(xyz[:2] - query_xy[i])) <= correct_m
            accepted_correct[i] = near and has_match[i]
            if query_poses is not None:
                truth_pose = np.asarray(query_poses[i], dtype=np.float64)
                trans_err.append(float(np.linalg.norm(xyz - truth_pose[:3, 3])))
                if len(m) > 3:
                    est = make_pose(xyz, np.asarray(m[3], dtype=np.float64))
                    rot_err.append(float(pose_errors(est[None], truth_pose[None])[1][0]))
            else:
                trans_err.append(float(np.hypot(*(xyz[:2] - query_xy[i]))))

    out: dict[str, Any] = {"frames": int(n), "answered": int(answered.sum()), "dropped_frames": int(n - answered.sum()),
                           "queries_with_match": int((answered & has_match).sum()), "top_k": int(k),
                           "correct_m": float(correct_m)}
    a = np.flatnonzero(answered)
    # Recall@N on the published candidates: one column per rank plus a last column standing for "a true
    # match outside the top-k" (score -inf, after every real candidate), so a query whose positives were
    # all missed still counts as a miss instead of being skipped.
    sim = np.full((len(a), k + 1), -np.inf)
    rows_truth = []
    for r, i in enumerate(a):
        sim[r, :len(cand_scores[i])] = cand_scores[i]
        hits = set(np.flatnonzero(np.isin(cand_ids[i], truth[i])).tolist())
        rows_truth.append(hits | {k} if has_match[i] else set())
    ns = [n_ for n_ in (1, 5, 10) if n_ <= max(k, 1)]
    rec_n = recall_at_n(sim, rows_truth, ns) if len(a) else {f"recall@{n_}": float("nan") for n_ in ns}
    out.update({f"recall@{n_}": rec_n[f"recall@{n_}"] for n_ in ns})

    if len(a):
        pr = precision_recall(top1_score[a], top1_correct[a], has_match[a])
        node_pr = precision_recall(accepted[a].astype(float), accepted_correct[a], has_match[a])
        out["accepted_precision"], out["accepted_recall"] = _operating_point(node_pr, 1.0)
    else:  # nothing answered (metrics.precision_recall needs at least one query)
        pr = {"precision": np.zeros(0), "recall": np.zeros(0), "thresholds": np.zeros(0), "auc": float("nan"),
              "max_f1": float("nan"), "recall@100p": float("nan")}
        out["accepted_precision"] = out["accepted_recall"] = float("nan")
    out.update(pr_auc=pr["auc"], max_f1=pr["max_f1"], **{"recall@100p": pr["recall@100p"]})
    out["accepted"] = int(accepted.sum())
    err = error_summary(np.asarray(trans_err), np.asarray(rot_err))
    out.update({f"match_{k}": v for k, v in err.items() if k != "count"})

    latency = receive - np.asarray(rec.sent_wall, dtype=np.float64)
    lat = latency[answered]
    out["latency_ms_p50"] = float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan")
    out["latency_ms_p99"] = float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan")
    out["latency_ms_max"] = float(lat.max() * 1e3) if len(lat) else float("nan")
    out["rate_hz"] = _rate(receive[answered])
    out["input_hz"] = _rate(np.asarray(rec.sent_wall, dtype=np.float64))

    loop_idx = align(rec.sent_stamps, [t for _, t, _ in rec.loop_closures])
    out["loop_closures"] = int((loop_idx >= 0).sum())
    if map_stamps is not None:
        kf = _nearest_ids(map_stamps, [t for _, _, t in rec.loop_closures])
        ok = [i >= 0 and k >= 0 and np.hypot(*(map_xy[k] - query_xy[i])) <= correct_m for i, k in zip(loop_idx, kf)]
        out["loop_closures_correct"] = int(sum(ok))
        out["loop_closure_precision"] = float(np.mean(ok)) if ok else float("nan")
    verified, verified_id, desc_accepted = np.zeros(n, bool), np.full(n, -1, np.int64), np.zeros(n, bool)
    if rec.inliers:
        parsed_inl = [parse_inliers(data) for _, data in rec.inliers]
        for i, (_, d_acc, ver, ids, _, checks) in zip(align(rec.sent_stamps, [p[0] for p in parsed_inl]), parsed_inl):
            if i >= 0:
                desc_accepted[i], verified[i] = d_acc, ver
                hit = np.flatnonzero(checks == 1.0)
                verified_id[i] = ids[hit[0]] if ver and len(hit) else -1
        poses = np.full((n, 4, 4), np.nan)
        for i, m in zip(m_idx, rec.matches):
            if i >= 0 and len(m) > 3:
                poses[i] = make_pose(np.asarray(m[2], dtype=np.float64), np.asarray(m[3], dtype=np.float64))
        a_idx = np.flatnonzero(answered)
        out["verified_matches"] = score_verified_matches(
            [truth[i] for i in a_idx], top1[a_idx], desc_accepted[a_idx], verified_id[a_idx], verified[a_idx],
            poses[a_idx], None if query_poses is None else np.asarray(query_poses, dtype=np.float64)[a_idx])
    out["node"] = dict(rec.node)
    if rec.node_rss_mb:
        out["node_rss_mb_start"], out["node_rss_mb_max"] = float(rec.node_rss_mb[0]), float(max(rec.node_rss_mb))
    details = {"answered": answered, "has_match": has_match, "top1": top1, "top1_score": top1_score,
               "top1_correct": top1_correct, "accepted": accepted, "accepted_correct": accepted_correct,
               "latency_s": latency, "precision": pr["precision"], "recall": pr["recall"],
               "thresholds": pr["thresholds"], "verified": verified, "verified_id": verified_id,
               "descriptor_accepted": desc_accepted}
    return out, details


def _nearest_ids(stamps: np.ndarray, wanted: Sequence[float], tol: float = STAMP_TOLERANCE_S) -> np.ndarray:
    """Id of the keyframe stamped each of ``wanted`` (-1 where none is), for unsorted stamps."""
    stamps = np.asarray(stamps, dtype=np.float64)
    out = np.full(len(wanted), -1, np.int64)
    for j, t in enumerate(wanted):
        if len(stamps):
            k = int(np.argmin(np.abs(stamps - t)))
            out[j] = k if abs(stamps[k] - t) <= tol else -1
    return out


def _rate(times: np.ndarray) -> float:
    """Events per second over the span of sorted event times (0 with fewer than two)."""
    times = np.sort(times[np.isfinite(times)])
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return float((len(times) - 1) / (times[-1] - times[0]))


def write_report(out_dir: str | Path, metrics: dict[str, Any], details: dict[str, np.ndarray], query_xy: np.ndarray,
                 map_xy: np.ndarray, stamps: np.ndarray, title: str = "replay") -> dict[str, Path]:
    """``metrics.json``, ``metrics.md``, ``queries.npz`` (per-query arrays), ``pr.png`` and the trajectories
    (``trajectory.png``: edges to the node's accepted matches; ``trajectory_top1.png``: to every top-1)."""
    from ..utils.results import write_json
    from .plots import plot_pr, plot_trajectory
    from .report import markdown_table, to_jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "table": out / "metrics.md", "queries": out / "queries.npz"}
    write_json(paths["json"], to_jsonable(metrics))
    fmt = {key: "d" for key in ("frames", "dropped_frames")}
    fmt.update({key: ".1f" for key in ("latency_ms_p50", "latency_ms_p99", "rate_hz")})
    table = f"# {title}\n\n" + markdown_table([metrics], REPLAY_KEYS, fmt)
    if metrics.get("verified_matches"):
        from .verified_matches import VERIFIED_KEYS, flatten_scores

        table += "\n\nVerified matches (from the node's outputs):\n\n" + markdown_table(
            [flatten_scores(metrics["verified_matches"])], VERIFIED_KEYS)
    paths["table"].write_text(table)
    np.savez(paths["queries"], stamps=np.asarray(stamps), query_xy=np.asarray(query_xy),
             **{k: v for k, v in details.items() if k not in ("precision", "recall", "thresholds")})
    paths["pr"] = plot_pr({"top-1 score": (details["precision"], details["recall"], metrics["pr_auc"])},
                          out / "pr.png", title=f"{title}: top-1 PR (correct within {metrics['correct_m']:g} m)")
    for name, chosen, what in (("trajectory", details["accepted"], "accepted place matches"),
                               ("trajectory_top1", details["answered"] & (details["top1"] >= 0), "top-1 candidates")):
        ok = details["accepted_correct"] if name == "trajectory" else details["top1_correct"]
        edges = [(int(i), int(details["top1"][i]), bool(ok[i])) for i in np.flatnonzero(chosen)]
        paths[name] = plot_trajectory(query_xy, edges, out / f"{name}.png", db_xy=map_xy,
                                      title=f"{title}: {what}")
    return paths


def pick_match_examples(details: dict[str, np.ndarray], per_kind: int = 4,
                        seed: int = 0) -> list[tuple[int, int, bool]]:
    """Up to ``per_kind`` correct, then up to ``per_kind`` wrong top-1 candidates of a replay, drawn reproducibly
    at random, as ``(query index, map keyframe id, correct)``. Wrong ones are taken from queries that had a
    true match in the map (the retrieval missed it), else from any answered query."""
    rng = np.random.default_rng(seed)
    answered = details["answered"] & (details["top1"] >= 0)
    correct = answered & details["top1_correct"]
    wrong = answered & ~details["top1_correct"]
    if (wrong & details["has_match"]).any():
        wrong &= details["has_match"]
    chosen = []
    for mask, ok in ((correct, True), (wrong, False)):
        idx = np.flatnonzero(mask)
        picks = np.sort(rng.choice(idx, size=min(per_kind, len(idx)), replace=False)) if len(idx) else []
        chosen += [(int(i), int(details["top1"][i]), ok) for i in picks]
    return chosen
