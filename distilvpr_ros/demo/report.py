"""The demo's report: ``<results>/demo/<timestamp>/report.md``, ``summary.json`` and the figures beside them.

:func:`write_demo_report` joins one block per section; each ``_section`` function below returns the markdown
lines of one heading of the report, in the order they appear.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.report import format_value, markdown_table
from ..utils.results import make_run_dir, write_json
from .stage import Demo
from .stages import train_config

#: Figures of the report: name in the report folder -> (stage, path in that stage's folder).
FIGURES = {
    "preview.png": ("world", "preview.png"),
    "recall_at_n.png": ("evaluate", "recall_at_n.png"),
    "matches_offline.png": ("evaluate", "student/matches.png"),
    "pr.png": ("localize", "pr.png"),
    "trajectory.png": ("localize", "replay/trajectory.png"),
    "trajectory_top1.png": ("localize", "replay/trajectory_top1.png"),
    "matches.png": ("localize", "matches.png"),
    "latency.png": ("localize", "latency.png"),
    "corridor.png": ("corridor", "corridor.png"),
    "teacher_training.png": ("teacher", "training.png"),
    "student_training.png": ("student", "training.png"),
}


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number as a report cell ("–" when missing)."""
    return format_value(value, spec)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), "|" + "---|" * len(names)]


class _Figures:
    """The figures copied into the report folder; :meth:`md` gives an image line for one that exists."""

    def __init__(self, demo: Demo, out: Path):
        self.present = set()
        for name, (stage, path) in FIGURES.items():
            src = demo.folder(stage) / path
            if src.is_file():
                shutil.copy(src, out / name)
                self.present.add(name)

    def md(self, name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if name in self.present else []


def _stages_section(demo: Demo, seconds: float) -> list[str]:
    """How long each stage took: its build time, also for a reused stage (when it was built)."""
    rows = [{**e, "seconds": e["seconds"] if e["status"] == "ran" else e.get("built_in_s"), "note": e.get("note", "")}
            for e in demo.log]
    return [f"# distilvpr demo ({demo.name}: {demo.results['world']['preset']} world)", "",
            f"Total {seconds:.0f} s. Settings: section `{demo.name}` of `config/demo.yaml` (below); work folder "
            f"`{demo.work}` (stages whose inputs did not change are reused on the next run).", "",
            "## Stages", "",
            markdown_table(rows, {"stage": "stage", "status": "status", "seconds": "seconds (when built)",
                                  "note": "note"}, {"seconds": ".1f"})]


def _world_section(demo: Demo, figures: _Figures) -> list[str]:
    world = demo.results["world"]
    runs = ", ".join(f"{k} ({v['condition']}, direction {v['direction']:+d})" for k, v in world["runs"].items())
    lines = ["## World", "", f"`{world['world']}`: runs {runs}.", "",
             *_header("region", "runs", "frames", "mean positives / frame", "cross-run pairs",
                      "queries with a true match")]
    for region, g in world["ground_truth"].items():
        lines.append(_row(region, g["runs"], g["frames"], f"{g.get('mean_positives_per_frame', 0):.1f}",
                          g.get("cross_run_pairs", 0), g.get("queries_with_a_true_match", "-")))
    return lines + [""] + figures.md("preview.png", "world preview")


def _seen_conditions(demo: Demo) -> set[str] | None:
    """Conditions the teacher or the student trained on (None: all of them)."""
    seen: set[str] = set()
    for role in ("teacher", "student"):
        conditions = train_config(demo, role).data.train_conditions
        if conditions is None:
            return None
        seen |= set(conditions)
    return seen


def _offline_section(demo: Demo, figures: _Figures) -> list[str]:
    """Teacher vs student: Recall@N of the offline evaluation, overall and by query condition."""
    r = demo.results
    t, st, ev = r["teacher"], r["student"], r["evaluate"]
    rows = [{"model": "teacher (camera+LiDAR)", **ev["teacher"], "val": t["val/recall@1"], "epochs": t["epochs"],
             "train_s": t["train_seconds"]},
            {"model": f"student (camera only, DistilVPR-{st.get('method', 'sc').upper()})", **ev["student"],
             "val": st["val/recall@1"], "epochs": st["epochs"], "train_s": st["train_seconds"]}]
    lines = ["## Teacher vs student: offline cross-run Recall@N", "",
             f"{ev['region']} region (never used for training or model selection): each run is the database for "
             f"the queries of every other run; a retrieval is correct within "
             f"{r['world']['ground_truth_config']['correct_m']:g} m; mean over {ev['student']['num_pairs']} ordered "
             f"run pairs ({ev['student']['num_queries']} queries).", "",
             markdown_table(rows, {"model": "model", "recall@1": "R@1", "recall@5": "R@5", "recall@10": "R@10",
                                   "recall@25": "R@25", "recall@1%": "R@1%", "val": "val AR@1 (selection)",
                                   "epochs": "epochs", "train_s": "training s"}, {"train_s": ".0f"})]
    conditions = sorted(ev["student"]["per_condition"])
    if conditions:
        seen = _seen_conditions(demo)
        lines += ["R@1 by query condition" + (" (* = never seen in training):" if seen else ":"), "",
                  *_header("model", *(f"{c}{'*' if seen and c not in seen else ''}" for c in conditions))]
        for role in ("teacher", "student"):
            lines.append(_row(role, *(fmt(ev[role]["per_condition"][c]["recall@1"]) for c in conditions)))
        lines.append("")
        lines += _headline_lines(ev, conditions, seen)
    return (lines + figures.md("recall_at_n.png", "Recall@N teacher vs student")
            + figures.md("matches_offline.png", "student: query -> top-1 (offline)"))


#: Rows of the headline table: (key in ``evaluate.headline``, label).
_HEADLINE_ROWS = (("all", "all queries"), ("same_direction", "same direction"),
                  ("opposite_direction", "opposite direction"), ("visible", "visible subset"),
                  ("visible_strict", "visible subset, strict"))


def _headline_lines(ev: dict, conditions: list[str], seen: set[str] | None) -> list[str]:
    """AR@1 on all / same-direction / opposite / visible queries by condition, with chance (camera headline)."""
    heads = {role: ev[role].get("headline") for role in ("teacher", "student")}
    if not all(heads.values()):
        return []  # an evaluation from before the headline existed
    student = ev["student"]
    lines = ["Camera headline: AR@1 on same-direction queries and on the *visible subset* (queries with a true match "
             "that sees at least 10 % of the structure the query's camera sees: a camera can solve them; *strict*: "
             "only such matches count as correct), by query condition; chance = AR@1 of a random ranking."]
    visible = student.get("visible")
    if visible:
        share = visible["share"]
        lines[-1] += (f" Visible subset from {student.get('visibility') or 'the world'}: "
                      f"{fmt(share.get('same_direction'), '.0%')} of same-direction and "
                      f"{fmt(share.get('opposite_direction'), '.0%')} of opposite-direction queries are in it, so a "
                      f"camera that solves exactly those scores {fmt(visible['ceiling@1'])} AR@1 on all queries.")
    lines += ["", *_header("model", "queries", "all conditions",
                           *(f"{c}{'*' if seen and c not in seen else ''}" for c in conditions))]
    for role, head in heads.items():
        for key, label in _HEADLINE_ROWS:
            if key in head:
                lines.append(_row(role, label, fmt(head[key]),
                                  *(fmt(head["per_condition"].get(c, {}).get(key)) for c in conditions)))
    head = heads["student"]
    lines.append(_row("chance", "all queries", fmt(head["chance@1"]),
                      *(fmt(head["per_condition"].get(c, {}).get("chance@1")) for c in conditions)))
    return lines + [""]


def _mapping_section(demo: Demo) -> list[str]:
    lines = ["## Mapping node (teacher + student, camera + LiDAR)", ""]
    m = demo.results["map"]
    if "skipped" in m:
        return lines + [f"Skipped: {m['skipped']}.", ""]
    node = m["node"]
    why = ("the whole run" if m["region"] == "all" else
           "only its test-region frames: the area never used for training or model selection, so the "
           "localization replay below scores the models on places they have not learnt"
           if m["region"] == "test" else f"only its {m['region']}-region frames")
    published = ", ".join(f"{v} {k}" for k, v in m["published"].items())
    return lines + [
        f"Bag `{Path(m['bag']).name}` ({m['condition']}, direction {m['direction']:+d}): {why}. Played over DDS "
        f"into `distilvpr_mapping` at {m['rate']:g}x real time ({sum(m['published'].values())} messages: "
        f"{published}).", "",
        *_header("keyframes in the map", "camera+LiDAR pairs", "drops", "missing odometry",
                 "keyframe latency p50 / p99 (ms)", "loop closures (teacher space)", "node memory (MB)"),
        _row(m["map_size"], int(node.get("pairs", 0)), int(node.get("drops", 0)), int(node.get("missing_odometry", 0)),
             f"{fmt(node.get('latency_ms_p50'), '.1f')} / {fmt(node.get('latency_ms_p99'), '.1f')}",
             len(m["loop_closures"]), fmt(m.get("node_rss_mb_max"), ".0f")), "",
        *_loop_score_lines(m.get("loop_closure_score"))]


def _loop_score_lines(score: dict | None) -> list[str]:
    """The mapping node's loop closures scored against the map's poses (not only counted)."""
    if not score:
        return []
    wrong = [f"{d:.0f}" for d in score["distances_m"] if d > score["correct_m"]]
    recall = ("no keyframe had an earlier place to close with (the run does not revisit itself)"
              if score["recall"] is None else f"recall {score['recall']:.3f} of {score['possible']} keyframes "
                                              "that could close a loop")
    return [f"Loop closures scored against the map's poses (correct within {score['correct_m']:g} m): "
            f"{score['correct']} correct, {score['wrong']} wrong"
            + (f" ({', '.join(wrong)} m apart)" if wrong else "")
            + f", precision {fmt(score['precision'], '.3f')}; {recall}.", ""]


def _localization_section(demo: Demo, figures: _Figures) -> list[str]:
    lines = ["## Localization node (student only, camera, ONNX Runtime)", ""]
    loc = demo.results["localize"]
    if "skipped" in loc:
        return lines + [f"Skipped: {loc['skipped']}.", ""]
    where = ("all its frames, places seen in training included (optimistic)" if loc["region"] == "all" else
             f"only its {loc['region']}-region frames")
    lines += [
        f"Bag `{Path(loc['bag']).name}` ({loc['condition']}, direction {loc['direction']:+d}; {where}) played at "
        f"{demo.settings.localization.hz:g} frames/s into `distilvpr_localization` against the map above "
        f"({loc['map_size']} keyframes, built in another condition); what the node published is scored against "
        f"the bag's odometry (correct within {loc['correct_m']:g} m).", "",
        markdown_table([loc], {"frames": "frames", "recall@1": "R@1", "pr_auc": "PR AUC", "max_f1": "max F1",
                               "recall@100p": "R@100%P", "accepted_precision": "accepted precision",
                               "accepted_recall": "accepted recall", "loop_closures": "loop closures"}),
        *_header("latency p50 (ms)", "latency p99 (ms)", "rate (Hz)", "input (Hz)", "dropped frames",
                 "node memory (MB)"),
        _row(fmt(loc["latency_ms_p50"], ".1f"), fmt(loc["latency_ms_p99"], ".1f"), fmt(loc["rate_hz"], ".1f"),
             fmt(loc.get("input_hz"), ".1f"), loc["dropped_frames"], fmt(loc.get("node_rss_mb_max"), ".0f")), "",
        "Latency: image published → `place_candidates/scores` received (same machine, one clock): "
        "transport, decoding, inference, matching. Accepted = the node's `place_match` after its "
        "threshold and sequence check; PR curve and max F1 sweep the top-1 score instead.", ""]
    head = demo.results.get("verifier") or {}
    if head.get("trained"):
        lines += [f"Camera verification uses CNN descriptors from a head the demo trained on the world's "
                  f"{head['region']} region ({head['pairs']} image pairs, losses "
                  f"{' -> '.join(f'{x:.2f}' for x in head['losses'])}; `verifier` stage).", ""]
    lines += _node_verification_lines(loc)
    lines += _verification_lines(loc.get("verification"))
    lines += figures.md("pr.png", "PR curve")
    lines += ["Trajectory of the replayed run over the map, with an edge from each query to the keyframe "
              "matched, green when within the correct distance, red otherwise: first the node's accepted "
              "matches (its `loop_closure` / `place_match` outputs), then every top-1 candidate.", ""]
    lines += figures.md("trajectory.png", "accepted matches") + figures.md("trajectory_top1.png", "top-1 candidates")
    return lines + figures.md("matches.png", "query -> matched keyframe") + figures.md("latency.png", "latency")


def _node_verification_lines(loc: dict) -> list[str]:
    """The node's own verified matches, scored from what it published (``localize.verified_matches``)."""
    v = loc.get("verified_matches")
    if not v:
        return []
    b, a, r = v["before"], v["after"], v["recall@1"]
    return [
        f"Verified by the node (`place_candidates/inliers`, `place_match`; `summary.json` → "
        f"`localize.verified_matches`, over the {v['queries']} answered frames):", "",
        *_before_after_table(b, a, r), "",
        f"Pose error of the node's verified `place_match`: translation median "
        f"{fmt(loc.get('match_translation_m_median'), '.2f')} m, p90 {fmt(loc.get('match_translation_m_p90'), '.2f')}"
        f" m; rotation median {fmt(loc.get('match_rotation_deg_median'), '.2f')} deg, p90 "
        f"{fmt(loc.get('match_rotation_deg_p90'), '.2f')} deg. Published loop closures: {loc.get('loop_closures', 0)}"
        f", correct {loc.get('loop_closures_correct', 0)} (precision {fmt(loc.get('loop_closure_precision'))}).",
        ""]


def _before_after_table(before: dict, after: dict, recall_at_1: dict) -> list[str]:
    """Accepted / correct / precision / recall / R@1 of the descriptor matches and of the verified ones."""
    b, a, r = before, after, recall_at_1
    return [*_header("", "accepted", "correct", "precision", "recall", "R@1"),
            _row("descriptor match (before)", b["accepted"], b["correct"], fmt(b["precision"]), fmt(b["recall"]),
                 fmt(r["before"])),
            _row("verified (after)", a["accepted"], a["correct"], fmt(a["precision"]), fmt(a["recall"]),
                 fmt(r["after"]))]


_FEATURE_NAMES = {"orb": "ORB", "sift": "SIFT", "cnn": "CNN descriptors at ORB keypoints"}


def _verification_lines(v: dict | None) -> list[str]:
    """The same frames through the verified pipeline: before / after verification, pose error, re-ranking."""
    if not v:
        return []
    b, a, e, r = v["before"], v["after"], v["pose_error"], v["recall@1"]
    features = _FEATURE_NAMES.get(v.get("features", "orb"), v.get("features"))
    return [
        f"Geometric verification (ROS-free pipeline on the same {v['queries']} frames: the student's top-"
        f"{v.get('top_k', 5)} verified by {features} + PnP against the map's keyframe images and LiDAR points; "
        f"`summary.json` → `localize.verification`):", "",
        *_before_after_table(b, a, r), "",
        f"Metric pose error of verified matches ({e['count']}): translation median "
        f"{fmt(e['translation_m_median'], '.2f')} m, p90 {fmt(e['translation_m_p90'], '.2f')} m; rotation median "
        f"{fmt(e['rotation_deg_median'], '.2f')} deg, "
        f"p90 {fmt(e['rotation_deg_p90'], '.2f')} deg; within {v['pose_ok_m']:g} m / {v['pose_ok_deg']:g} deg: "
        f"{fmt(a['metric_precision'])}. Latency per frame p50 {fmt(v['latency_ms_p50'], '.0f')} ms, p99 "
        f"{fmt(v['latency_ms_p99'], '.0f')} ms (one thread). Most common rejections: "
        + (", ".join(f"{k} ({n})" for k, n in v.get("rejections", {}).items()) or "none") + ".", ""]


def _corridor_section(demo: Demo, figures: _Figures) -> list[str]:
    lines = ["## Real images: VPR-Bench Corridor", ""]
    c = demo.results["corridor"]
    if "skipped" in c:
        return lines + [f"Skipped: {c['skipped']}.", ""]
    ours = f"**{c['method']} (demo student)**"
    table = sorted([{**c, "method": ours}] + [{"method": k, **v} for k, v in c["peers"].items()],
                   key=lambda row: -row["recall@1"])
    return lines + [
        f"The demo's student (trained on the synthetic world only) on 111 real indoor queries, rank {c['rank']} of "
        f"{len(table)} by R@1; peers' rows are recomputed by the same code from their published similarity "
        "matrices.", "",
        markdown_table(table, ["method", "recall@1", "recall@5", "pr_auc", "max_f1"])] + figures.md(
            "corridor.png", "Corridor R@1")


def _training_section(figures: _Figures) -> list[str]:
    return ["## Training curves", ""] + figures.md("teacher_training.png", "teacher") + figures.md(
        "student_training.png", "student")


def _settings_section(demo: Demo) -> list[str]:
    settings_yaml = yaml.safe_dump({demo.name: demo.settings.model_dump(mode="json")}, sort_keys=False).rstrip()
    return ["## Settings", "", "```yaml", settings_yaml, "```", ""]


def write_demo_report(demo: Demo, results_root: Path, seconds: float) -> Path:
    """``report.md``, ``summary.json`` and the PNGs in a fresh ``<results_root>/demo/<timestamp>/``."""
    out = make_run_dir(results_root, "demo")
    figures = _Figures(demo, out)
    lines = (_stages_section(demo, seconds) + _world_section(demo, figures) + _offline_section(demo, figures)
             + _mapping_section(demo) + _localization_section(demo, figures) + _corridor_section(demo, figures)
             + _training_section(figures) + _settings_section(demo))
    (out / "report.md").write_text("\n".join(lines))
    world = demo.results["world"]
    write_json(out / "summary.json", {"name": demo.name, "preset": world["preset"], "world": world["world"],
                                      "ground_truth": world["ground_truth"], "work": str(demo.work),
                                      "seconds": round(seconds, 1), "stages": demo.log,
                                      **{k: v for k, v in demo.results.items() if k != "world"}})
    return out
