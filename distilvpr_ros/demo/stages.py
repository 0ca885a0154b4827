"""The demo's chain, as data: :data:`STAGES`, each with what it needs, its inputs, its build and its outputs.

 1. world      generate (or reuse) the synthetic camera+LiDAR world; preview, ground-truth summary
 2. teacher    train the camera+LiDAR teacher (``training.trainer.train_teacher``)
 3. student    distil the camera-only student with DistilVPR-SC (``train_student``)
 4. export     the student to ONNX (``models.export.export_model``): what the localization node deploys
 5. verifier   train the CNN descriptor head of camera verification on the world's train region
               (``verification.cnn_head_training``), when the localization node uses CNN features without a head
               of its own; otherwise it records that ORB/SIFT need none
 6. map        play one run's bag (camera + LiDAR + odometry) into the mapping node over DDS; the node
               builds the place map with teacher and student descriptors (``ros.replay_mapping.run_mapping``)
 7. localize   play a bag of another condition into the localization node (camera only, ONNX Runtime) and
               score what it publishes (``ros.replay_localization.run_replay``); then the same frames through the
               ROS-free verified pipeline (``pipeline.offline.localize_sequence``, camera PnP against the map's
               keyframe views): precision / recall before and after verification, metric pose error, R@1
               before and after re-ranking (``verification`` in its results)
 8. evaluate   offline cross-run Recall@N of teacher and student (``evaluation.evaluate.run_evaluate``)
 9. corridor   the student on the real Corridor images beside 10 published methods (skipped, with a line
               in the report, where the data is absent)

The world lives under the data root (shared by runs); its stage's build id is the fingerprint of its
``world.json``, so a world regenerated identically does not retrain anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..config import GroundTruthConfig
from ..data.bag_trim import frame_windows, trim_bag
from .stage import Demo, DemoError, Stage, digest
from .world import ensure_world, ground_truth_summary, preset_config, world_folder

# --------------------------------------------------------------------------------------------------
# 1. world
# --------------------------------------------------------------------------------------------------


def _world_inputs(demo: Demo) -> dict:
    preset = demo.settings.world
    return {"preset": preset, "config": preset_config(preset),
            "folder": str(world_folder(demo.data_root, preset).resolve())}


def _world_fingerprint(demo: Demo, result: dict) -> str | None:
    """The world's content (its ``world.json``), or None when it is gone."""
    try:
        return digest((Path(result["world"]) / "world.json").read_text())
    except (OSError, KeyError):
        return None


def build_world(demo: Demo, out: Path) -> dict:
    from ..data.world.preview import make_preview

    world = ensure_world(demo.data_root, demo.settings.world, progress=demo.progress)
    shutil.copy(make_preview(world), out / "preview.png")
    gt_cfg = GroundTruthConfig()
    meta = json.loads((world / "world.json").read_text())
    runs = {r["run_id"]: {"condition": r["condition"]["name"], "direction": r["direction"], "lane": r["lane"],
                          "frames": r["frames"]} for r in meta["runs"]}
    return {"ground_truth": ground_truth_summary(world, gt_cfg), "ground_truth_config": gt_cfg.model_dump(),
            "runs": runs, "world": str(world), "preset": demo.settings.world}


def world_path(demo: Demo) -> Path:
    return Path(demo.results["world"]["world"])


# --------------------------------------------------------------------------------------------------
# 2-4. teacher, student, ONNX export
# --------------------------------------------------------------------------------------------------

#: TrainConfig keys that say where things go, not what is trained (left out of the stage keys).
_LOCATION_KEYS = ("out_dir", "results_root", "progress", "resume")


def train_config(demo: Demo, role: str, extra: dict[str, Any] | None = None):
    """The TrainConfig of ``role`` (teacher / student): its overrides from demo.yaml plus the demo's paths."""
    from ..training.config import TrainConfig

    overrides = {**getattr(demo.settings, role), "data.root": str(world_path(demo)),
                 "out_dir": str(demo.folder(role)), "feature_cache.dir": str(demo.work / "cache"),
                 "progress": demo.progress, **(extra or {})}
    return TrainConfig.from_yaml(None, overrides)


def _student_config(demo: Demo):
    return train_config(demo, "student", {"distill.teacher": str(demo.folder("teacher") / "best")})


def _config_key(cfg) -> dict:
    """What decides a training run's weights: the resolved config without paths (the world is keyed apart)
    and without unset (None) values, so a new optional TrainConfig key does not invalidate earlier runs."""
    dump = cfg.model_dump(mode="json")
    for key in _LOCATION_KEYS:
        dump.pop(key, None)
    dump["data"].pop("root", None)
    dump["feature_cache"].pop("dir", None)
    dump["distill"].pop("teacher", None)
    return _without_none(dump)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _training_summary(run: Path) -> dict:
    """Epochs, best validation AR@1 and its epoch, training seconds (from ``history.json``)."""
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda r: r["val/recall@1"])
    return {"epochs": len(history), "best_epoch": best["epoch"], "val/recall@1": best["val/recall@1"],
            "train_seconds": sum(r.get("seconds", 0.0) for r in history),
            "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in history]))}


def build_teacher(demo: Demo, out: Path) -> dict:
    from ..training.trainer import train_teacher

    train_teacher(train_config(demo, "teacher"))
    return _training_summary(out)


def build_student(demo: Demo, out: Path) -> dict:
    from ..training.trainer import train_student

    cfg = _student_config(demo)
    train_student(cfg)
    return {**_training_summary(out), "method": cfg.distill.method}


def build_export(demo: Demo, out: Path) -> dict:
    from ..models.export import export_model

    path = export_model(demo.folder("student") / "best", out / "student.onnx")
    return {"onnx_mb": round(path.stat().st_size / 2**20, 2)}


# --------------------------------------------------------------------------------------------------
# 5. the camera verifier's descriptor head
# --------------------------------------------------------------------------------------------------

HEAD_FILE = "cnn_head.safetensors"


def _needs_head(demo: Demo) -> bool:
    node = demo.settings.localization.node
    return node.get("verification.camera.features") == "cnn" and not node.get("verification.camera.cnn_head")


def build_verifier(demo: Demo, out: Path) -> dict:
    if not _needs_head(demo):
        return {"trained": False, "reason": "the localization node's verification needs no trained head"}
    from ..verification.cnn_head_training import collect, train_head

    s, stages = demo.settings.verifier, (0, 1, 2, 3, 4)
    samples = collect(world_path(demo), s.region, stages, s.step)
    if not samples:
        raise DemoError(f"verifier stage: no training pairs in the {s.region} region (a day run and another "
                        "condition driving the same way are needed)")
    head, losses = train_head(samples, stages, s.epochs, seed=s.seed)
    head.save(out / HEAD_FILE, world=str(world_path(demo)), region=s.region, pairs=len(samples), epochs=s.epochs,
              seed=s.seed, losses=losses)
    return {"trained": True, "pairs": len(samples), "losses": [round(x, 4) for x in losses], "region": s.region}


def localization_overrides(demo: Demo) -> dict:
    """The localization node's overrides, with the demo's trained head for CNN verification."""
    node = dict(demo.settings.localization.node)
    if _needs_head(demo):
        node["verification.camera.cnn_head"] = str(demo.folder("verifier") / HEAD_FILE)
    return node


# --------------------------------------------------------------------------------------------------
# 6-7. the ROS 2 nodes: map, localize
# --------------------------------------------------------------------------------------------------


def region_bag(world: Path, run: str, region: str, folder: Path) -> Path:
    """The bag of ``run``: the world's own for region ``all``, else a copy trimmed to the region's frames in
    ``folder/<run>`` (made once)."""
    from ..data.synthetic import load_synthetic

    source = world / "bags" / run
    if not source.exists():
        have = sorted(p.name for p in (world / "bags").iterdir()) if (world / "bags").is_dir() else []
        raise FileNotFoundError(f"no bag for run {run!r} under {world / 'bags'} (runs: {', '.join(have) or 'none'})")
    if region == "all":
        return source
    dest = folder / run
    if dest.exists():
        return dest
    seq = next((s for s in load_synthetic(world, regions={region}) if s.run == run), None)
    if seq is None or not len(seq):
        raise ValueError(f"run {run} has no frames in the {region} region")
    windows = frame_windows(seq.frame_indices, seq.timestamps)
    copied = trim_bag(source, dest, windows)
    print(f"[demo] {run}: {len(seq)} {region}-region frames in {len(windows)} stretch(es) -> {dest} "
          f"({copied} messages)")
    return dest


def _ros_missing(demo: Demo) -> str | None:
    """Why the ROS 2 stages cannot run here (None when they can)."""
    if importlib.util.find_spec("rclpy") is None:
        return "ROS 2 (rclpy) is not importable in this environment; the mapping and localization nodes need it"
    # Keep the demo's DDS traffic on this machine unless the user chose otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return None


def _run_info(demo: Demo, run: str) -> dict:
    runs = demo.results["world"]["runs"]
    if run not in runs:
        raise ValueError(f"run {run!r} is not in the world (runs: {', '.join(runs)}); fix config/demo.yaml")
    return runs[run]


def build_map(demo: Demo, out: Path) -> dict:
    from ..pipeline.calibration import world_calibration
    from ..ros.node_process import ReplayError
    from ..ros.replay_mapping import run_mapping

    s = demo.settings.mapping
    info = _run_info(demo, s.run)
    bag = region_bag(world_path(demo), s.run, s.region, out / "bags")
    try:
        summary = run_mapping(bag, demo.folder("teacher") / "best", demo.folder("student") / "best",
                              out / "map", rate=s.rate, max_gap_s=s.max_gap_s, odom_lead_s=s.odom_lead_s,
                              max_unpaired=s.max_unpaired,
                              overrides={**s.node, "map.resume": False}, out_dir=out, progress=demo.progress,
                              calibration=world_calibration(world_path(demo)))
    except ReplayError as e:
        raise DemoError(f"map stage: {e}") from None
    return {**summary, "condition": info["condition"], "direction": info["direction"], "region": s.region,
            "loop_closure_score": score_map_loop_closures(out / "map", summary["loop_closures"], s.node)}


def score_map_loop_closures(map_path: Path, loops: list, node: dict) -> dict:
    """The mapping node's loop closures scored against its map's keyframe poses (the world's odometry is
    its ground truth): correct within the training-positive radius, recall over the keyframes that had an
    earlier place to close with."""
    from ..evaluation.loop_closures import score_loop_closures
    from ..mapping.database import PlaceDatabase
    from ..mapping.matcher import MatcherConfig

    db = PlaceDatabase.load(map_path)
    exclude = float(node.get("matcher.exclude_recent_s", MatcherConfig().exclude_recent_s))
    return score_loop_closures(loops, db.stamps, db.positions, correct_m=GroundTruthConfig().positive_m,
                               exclude_recent_s=exclude)


def build_localize(demo: Demo, out: Path) -> dict:
    from ..ros.node_process import ReplayError
    from ..ros.replay_localization import run_replay
    from .plots import replay_plots

    s, node = demo.settings.localization, localization_overrides(demo)
    info = _run_info(demo, s.run)
    bag = region_bag(world_path(demo), s.run, s.region, out / "bags")
    try:
        metrics = run_replay(bag, demo.folder("map") / "map", demo.folder("export") / "student.onnx", hz=s.hz,
                             overrides=node, out_dir=out / "replay", correct_m=GroundTruthConfig().correct_m)
    except ReplayError as e:
        raise DemoError(f"localize stage: {e}") from None
    map_bag = region_bag(world_path(demo), demo.settings.mapping.run, demo.settings.mapping.region,
                         demo.folder("map") / "bags")
    replay_plots(out, bag, map_bag, demo.folder("map") / "map", metrics)
    verification = verified_localization(demo, bag, node, metrics.get("correct_m", GroundTruthConfig().correct_m))
    return {**metrics, "condition": info["condition"], "direction": info["direction"], "region": s.region,
            "verification": verification}


def verified_localization(demo: Demo, bag: Path, node: dict, correct_m: float) -> dict:
    """The localization bag's frames through the ROS-free pipeline with camera verification against the map's
    keyframe views (the node's settings, the world's calibration for runs the map recorded none for)."""
    from ..pipeline.calibration import world_calibration
    from ..pipeline.config import load_node_config
    from ..pipeline.embedder import Embedder
    from ..pipeline.localizer import Localizer
    from ..pipeline.offline import localize_sequence, open_bag_sequence

    cfg = load_node_config(None, **node)
    run = Path(bag).name
    student = Embedder.from_onnx(demo.folder("export") / "student.onnx")
    loc = Localizer.load(student, demo.folder("map") / "map", cfg.matcher, run, cfg.image_quality,
                         cfg.verification.model_copy(update={"enabled": True}), world_calibration(world_path(demo)))
    scored = localize_sequence(loc, open_bag_sequence(bag, cfg, run), correct_m, progress=demo.progress)
    return {**scored, "features": cfg.verification.camera.features}


# --------------------------------------------------------------------------------------------------
# 8-9. offline evaluation, Corridor
# --------------------------------------------------------------------------------------------------

#: Keys of an evaluation kept in the demo's results.
_EVAL_KEYS = ("recall@1", "recall@5", "recall@10", "recall@25", "recall@1%", "recall_curve", "num_pairs",
              "num_queries", "chance@1", "headline")
#: Keys of the visible subset kept (``evaluate_sequences``' ``visible`` block).
_VISIBLE_KEYS = ("recall@1", "chance@1", "num_queries", "share", "ceiling@1")
_EVAL_MODELS = {"teacher": "teacher (camera+LiDAR)", "student": "student (camera only)"}


def build_evaluate(demo: Demo, out: Path) -> dict:
    from ..evaluation.evaluate import run_evaluate
    from ..evaluation.plots import plot_recall_at_n

    region = demo.settings.evaluate.region
    result = {}
    for role in _EVAL_MODELS:
        m = run_evaluate(demo.folder(role) / "best", world_path(demo), region=region, out_dir=out / role,
                         progress=demo.progress)
        visible = m["visible"]
        result[role] = {**{k: m[k] for k in _EVAL_KEYS},
                        "per_condition": {c: {k: r[k] for k in ("recall@1", "recall@5", "num_queries")}
                                          for c, r in m["per_condition"].items()},
                        "visible": ({k: visible[k] for k in _VISIBLE_KEYS} if visible else None),
                        "visibility": (m["config"]["visibility"] or {}).get("source")}
    method = demo.results["student"].get("method", "sc").upper()
    plot_recall_at_n({f"{_EVAL_MODELS['teacher']}": result["teacher"]["recall_curve"],
                      f"{_EVAL_MODELS['student']}, DistilVPR-{method}": result["student"]["recall_curve"]},
                     out / "recall_at_n.png", title=f"Cross-run Recall@N, {region} region")
    return {**result, "region": region}


def corridor_root(demo: Demo) -> Path:
    from ..evaluation.corridor import CORRIDOR_ROOT

    return Path(demo.settings.corridor.root or CORRIDOR_ROOT)


def _corridor_missing(demo: Demo) -> str | None:
    root = corridor_root(demo)
    if root.is_dir():
        return None
    return f"Corridor data not found at {root} (VPR-Bench Corridor; see ../shared/data/corridor)"


def build_corridor(demo: Demo, out: Path) -> dict:
    from ..evaluation.corridor import run_corridor

    r = run_corridor(demo.folder("student") / "best", root=corridor_root(demo), out_dir=out, progress=demo.progress)
    return {k: r[k] for k in ("method", "recall@1", "recall@5", "pr_auc", "max_f1", "recall@100p", "rank", "peers")}


# --------------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------------

STAGES: tuple[Stage, ...] = (
    Stage("world", "generate (or reuse) the synthetic camera+LiDAR world", build_world,
          inputs=_world_inputs, outputs=("preview.png",), fingerprint=_world_fingerprint),
    Stage("teacher", "train the camera+LiDAR teacher", build_teacher, needs=("world",),
          inputs=lambda demo: {"config": _config_key(train_config(demo, "teacher"))},
          outputs=("best/model.safetensors",)),
    Stage("student", "distil the camera-only student (DistilVPR)", build_student, needs=("world", "teacher"),
          inputs=lambda demo: {"config": _config_key(_student_config(demo))}, outputs=("best/model.safetensors",)),
    Stage("export", "export the student to ONNX", build_export, needs=("student",), outputs=("student.onnx",)),
    Stage("verifier", "train the descriptor head of CNN camera verification (when the node uses one)",
          build_verifier, needs=("world",),
          inputs=lambda demo: {"settings": demo.settings.verifier.model_dump(mode="json"),
                               "needed": _needs_head(demo)}, outputs=()),
    Stage("map", "build the place map through the mapping node (bag -> DDS -> node)", build_map,
          needs=("world", "teacher", "student"), inputs=lambda demo: {"settings": demo.settings.mapping.model_dump(
              mode="json")}, outputs=("map", "mapping.json"), unavailable=_ros_missing),
    Stage("localize", "replay a bag of another condition through the localization node", build_localize,
          needs=("world", "map", "export", "verifier"),
          inputs=lambda demo: {"settings": demo.settings.localization.model_dump(mode="json")},
          outputs=("replay/metrics.json", "pr.png", "matches.png", "latency.png"), unavailable=_ros_missing),
    Stage("evaluate", "offline cross-run Recall@N, teacher vs student", build_evaluate,
          needs=("world", "teacher", "student"),
          inputs=lambda demo: {"region": demo.settings.evaluate.region, "visible_subset": 1},
          outputs=("recall_at_n.png", "student/matches.png")),
    Stage("corridor", "real-image check on VPR-Bench Corridor", build_corridor, needs=("student",),
          inputs=lambda demo: {"root": str(corridor_root(demo).resolve())}, outputs=("corridor.png",),
          unavailable=_corridor_missing),
)
