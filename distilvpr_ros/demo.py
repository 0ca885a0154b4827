"""The main job on the embedded synthetic world: what ``make demo`` / ``distilvpr demo`` runs.

One command chains the whole pipeline; every setting is in ``config/demo.yaml`` (section ``quick`` with
``--quick``, else ``default``):

 1. world      generate (or reuse) the synthetic camera+LiDAR world; preview, ground-truth summary
 2. teacher    train the camera+LiDAR teacher (``training.trainer.train_teacher``)
 3. student    distil the camera-only student with DistilVPR-SC (``train_student``)
 4. export     the student to ONNX (``models.export.export_model``): what the localization node deploys
 5. map        play one run's bag (camera + LiDAR + odometry) into the mapping node over DDS; the node
               builds the place map with teacher and student descriptors (``ros.replay.run_mapping``)
 6. localize   play a bag of another condition into the localization node (camera only, ONNX Runtime) and
               score what it publishes (``ros.replay.run_replay``)
 7. evaluate   offline cross-run Recall@N of teacher and student (``evaluation.evaluate.run_evaluate``)
 8. corridor   the student on the real Corridor images beside 10 published methods (skipped, with a line
               in the report, where the data is absent)
 9. report     ``<results>/demo/<timestamp>/report.md`` + PNGs, and ``<results>/demo/latest``

Resume: stage ``S`` works in ``<results>/demo/work_<quick|default>/S/`` and records in ``S/stage.json`` a
hash of its inputs: its settings, the world's fingerprint and the build ids of the stages it uses. A later
run reuses a stage whose record matches (and whose outputs are there) and re-runs it otherwise; a stage that
re-runs gets a new build id, so every stage downstream of it re-runs too. ``fresh=True`` re-runs all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import yaml
from pydantic import Field

from .config import GroundTruthConfig, Section, load_yaml
from .data.ground_truth import TrainingGroundTruth, cross_run_pairs
from .utils.results import make_run_dir, write_json

#: The settings file beside the package (installed as share/distilvpr_ros/config/demo.yaml).
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
STAGE_FILE = "stage.json"
Region = Literal["train", "val", "test", "all"]


class DemoError(RuntimeError):
    """A stage failed for a reason outside the user's input (a ROS node did not start or died)."""


# --------------------------------------------------------------------------------------------------
# Settings (config/demo.yaml)
# --------------------------------------------------------------------------------------------------


class MappingSettings(Section):
    """Which bag the mapping node builds the map from, and how it is played."""

    run: str = Field(description="run whose bag is mapped (camera + LiDAR + odometry)")
    region: Region = Field("test", description="only this region's frames (a trimmed bag), or all")
    rate: float = Field(2.0, gt=0, description="playback speed, x real time")
    max_gap_s: float = Field(1.0, gt=0, description="pauses in the bag longer than this are shortened to it (s)")
    odom_lead_s: float = Field(0.0, ge=0, description="odometry is sent this much bag time early (ros/replay.py)")
    max_unpaired: int | None = Field(
        None, ge=0, description="hold each camera frame until the node has paired all but this many of the frames "
                                "before it (None: play on schedule; ros/replay.py)")
    node: dict[str, Any] = Field(default_factory=dict, description="NodeConfig overrides of the mapping node")


class LocalizationSettings(Section):
    """Which bag the localization node is replayed on, and how."""

    run: str = Field(description="run whose camera is replayed (another condition than the map's)")
    region: Region = Field("test", description="only this region's frames (a trimmed bag), or all")
    hz: float = Field(10.0, gt=0, description="frames per second played")
    node: dict[str, Any] = Field(default_factory=dict, description="NodeConfig overrides of the localization node")


class EvaluateSettings(Section):
    region: Literal["train", "val", "test"] = Field("test", description="region of the offline evaluation")


class CorridorSettings(Section):
    root: Path | None = Field(None, description="VPR-Bench Corridor folder (None: ../shared/data/corridor)")


class DemoSettings(Section):
    """One section of ``config/demo.yaml``."""

    world: str = Field(description="synthetic world preset: tiny | default | large")
    teacher: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides of the teacher")
    student: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides of the student")
    mapping: MappingSettings
    localization: LocalizationSettings
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    corridor: CorridorSettings = Field(default_factory=CorridorSettings)


def load_demo_settings(path: str | Path | None, section: str) -> DemoSettings:
    """``section`` (``quick`` / ``default``) of the demo YAML (default :data:`DEMO_CONFIG`)."""
    path = Path(path) if path is not None else DEMO_CONFIG
    data = load_yaml(path)
    if section not in data:
        raise ValueError(f"{path}: no '{section}:' section (has {sorted(data)})")
    try:
        return DemoSettings.model_validate(data[section])
    except ValueError as e:
        raise ValueError(f"{path}, section '{section}': {e}") from None


# --------------------------------------------------------------------------------------------------
# The stage runner
# --------------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Demo:
    """What the stages share: settings, folders, each stage's result and build id, and the run log."""

    name: str  # "quick" | "default"
    settings: DemoSettings
    data_root: Path
    work: Path
    progress: bool = True
    fresh: bool = False
    results: dict[str, dict] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # stage -> build id (changes whenever it is rebuilt)
    log: list[dict] = field(default_factory=list)  # per stage: name, status, seconds, folder, note
    current: str = ""

    def folder(self, stage: str) -> Path:
        return self.work / stage

    def cached(self, inputs: dict, build: Callable[[Path], dict], required: Sequence[str] = ()) -> dict:
        """The current stage's result: reused from its folder when ``inputs`` (and ``required`` outputs) match
        what it was built from, else built afresh by ``build(folder)`` and recorded."""
        from .evaluation.report import to_jsonable

        out = self.folder(self.current)
        key = _digest(inputs)
        record = _read_record(out)
        if (not self.fresh and record is not None and record.get("key") == key
                and all((out / path).exists() for path in required)):
            self.ids[self.current] = record["id"]
            self.log.append({"stage": self.current, "status": "reused", "seconds": 0.0,
                             "built_in_s": record.get("seconds"), "folder": str(out)})
            print(f"[demo] {self.current}: reusing {out} (inputs unchanged; built in {record.get('seconds', 0):.0f} s)")
            return record["result"]
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        started = time.perf_counter()
        result = to_jsonable(build(out))
        seconds = round(time.perf_counter() - started, 1)
        finished = datetime.now().isoformat(timespec="seconds")
        build_id = uuid.uuid4().hex[:20]  # new on every build, so the stages using this one rebuild too
        write_json(out / STAGE_FILE, {"stage": self.current, "key": key, "id": build_id, "inputs": inputs,
                                      "result": result, "seconds": seconds, "finished": finished})
        self.ids[self.current] = build_id
        self.log.append({"stage": self.current, "status": "ran", "seconds": seconds, "folder": str(out)})
        print(f"[demo] {self.current}: done in {seconds:.1f} s")
        return result

    def skip(self, reason: str) -> dict:
        """Record the current stage as skipped (checked again on the next run)."""
        self.ids[self.current] = "skipped"
        self.log.append({"stage": self.current, "status": "skipped", "seconds": 0.0, "note": reason})
        print(f"[demo] {self.current}: skipped: {reason}")
        return {"skipped": reason}


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAGE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------------------------------
# 1. world
# --------------------------------------------------------------------------------------------------

# Render settings that change how fast a world is made, not what is in it.
_EXECUTION_KNOBS = ("threads", "workers", "processes")


def _content_config(config: dict) -> dict:
    """A world config without the execution knobs, in JSON form (what decides the generated files)."""
    config = json.loads(json.dumps(config, default=str))
    for knob in _EXECUTION_KNOBS:
        config.get("render", {}).pop(knob, None)
    return config


def ensure_world(data_root: Path, preset: str, progress: bool = True) -> Path:
    """Generate the preset's world under ``data_root`` unless an identical one is already there."""
    from .data.world.config import load_world_config
    from .data.world.generate import generate_world

    cfg = load_world_config(preset, None, None)
    out = data_root / f"world_{preset}"
    meta = out / "world.json"
    if meta.is_file():
        try:
            if _content_config(json.loads(meta.read_text()).get("config", {})) == _content_config(cfg.model_dump()):
                print(f"[demo] reusing {out} (same config)")
                return out
        except json.JSONDecodeError:
            pass
        print(f"[demo] {out} was made with another config or is incomplete: regenerating")
        shutil.rmtree(out)
    print(f"[demo] generating the '{preset}' synthetic world into {out}")
    generate_world(out, cfg, progress=progress)
    return out


def ground_truth_summary(world: Path, gt_cfg: GroundTruthConfig) -> dict:
    """Per-region frame counts, training positives and cross-run evaluation pairs."""
    from .data.synthetic import load_synthetic

    summary = {}
    for region in ("train", "val", "test"):
        seqs = [s for s in load_synthetic(world, regions={region}) if len(s)]
        if not seqs:
            summary[region] = {"runs": 0, "frames": 0}
            continue
        positions = np.concatenate([s.poses[:, :2, 3] for s in seqs])
        gt = TrainingGroundTruth.from_positions(positions, gt_cfg)
        pairs = cross_run_pairs(seqs, gt_cfg)
        n_q = sum(len(p.true_matches) for p in pairs)
        n_eval = sum(len(p.evaluable) for p in pairs)
        summary[region] = {
            "runs": len(seqs),
            "frames": int(len(positions)),
            "mean_positives_per_frame": float(np.mean([len(p) for p in gt.positives])),
            "cross_run_pairs": len(pairs),
            "queries_with_a_true_match": f"{n_eval}/{n_q}",
        }
    return summary


def stage_world(demo: Demo) -> dict:
    from .data.world.preview import make_preview

    world = ensure_world(demo.data_root, demo.settings.world, progress=demo.progress)
    fingerprint = _digest((world / "world.json").read_text())

    def build(out: Path) -> dict:
        shutil.copy(make_preview(world), out / "preview.png")
        gt_cfg = GroundTruthConfig()
        meta = json.loads((world / "world.json").read_text())
        runs = {r["run_id"]: {"condition": r["condition"]["name"], "direction": r["direction"], "lane": r["lane"],
                              "frames": r["frames"]} for r in meta["runs"]}
        return {"ground_truth": ground_truth_summary(world, gt_cfg), "ground_truth_config": gt_cfg.model_dump(),
                "runs": runs}

    result = demo.cached({"world": fingerprint}, build, required=["preview.png"])
    demo.ids["world"] = fingerprint  # the world's content, not when its summary was made
    return {**result, "world": str(world), "preset": demo.settings.world}


def _world(demo: Demo) -> Path:
    return Path(demo.results["world"]["world"])


# --------------------------------------------------------------------------------------------------
# 2-4. teacher, student, ONNX export
# --------------------------------------------------------------------------------------------------

#: TrainConfig keys that say where things go, not what is trained (left out of the stage keys).
_LOCATION_KEYS = ("out_dir", "results_root", "progress", "resume")


def _train_config(demo: Demo, role: str, out: Path, extra: dict[str, Any] | None = None):
    """The TrainConfig of ``role`` (teacher / student): its overrides from demo.yaml plus the demo's paths."""
    from .training.config import TrainConfig

    overrides = {**getattr(demo.settings, role), "data.root": str(_world(demo)), "out_dir": str(out),
                 "feature_cache.dir": str(demo.work / "cache"), "progress": demo.progress, **(extra or {})}
    return TrainConfig.from_yaml(None, overrides)


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


def stage_teacher(demo: Demo) -> dict:
    from .training.trainer import train_teacher

    out = demo.folder("teacher")
    cfg = _train_config(demo, "teacher", out)

    def build(out: Path) -> dict:
        train_teacher(cfg)
        return _training_summary(out)

    return demo.cached({"world": demo.ids["world"], "config": _config_key(cfg)}, build,
                       required=["best/model.safetensors"])


def stage_student(demo: Demo) -> dict:
    from .training.trainer import train_student

    out = demo.folder("student")
    teacher = demo.folder("teacher") / "best"
    cfg = _train_config(demo, "student", out, {"distill.teacher": str(teacher)})

    def build(out: Path) -> dict:
        train_student(cfg)
        return {**_training_summary(out), "method": cfg.distill.method}

    return demo.cached({"world": demo.ids["world"], "teacher": demo.ids["teacher"], "config": _config_key(cfg)},
                       build, required=["best/model.safetensors"])


def stage_export(demo: Demo) -> dict:
    from .models.export import export_model

    def build(out: Path) -> dict:
        path = export_model(demo.folder("student") / "best", out / "student.onnx")
        return {"onnx_mb": round(path.stat().st_size / 2**20, 2)}

    return demo.cached({"student": demo.ids["student"]}, build, required=["student.onnx"])


# --------------------------------------------------------------------------------------------------
# 5-6. the ROS 2 nodes: map, localize
# --------------------------------------------------------------------------------------------------

#: Message types kept only within ``pad_s`` of a region's frames when a bag is trimmed (others, e.g.
#: odometry, within ``context_s``: the nodes interpolate odometry around each frame).
_FRAME_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2",
                "sensor_msgs/msg/CameraInfo")


def frame_windows(frame_indices: np.ndarray, stamps: np.ndarray) -> list[tuple[float, float]]:
    """``(first, last)`` stamp of each run of consecutive frame indices."""
    windows: list[list[float]] = []
    for k, (i, t) in enumerate(zip(frame_indices, stamps)):
        if windows and i == frame_indices[k - 1] + 1:
            windows[-1][1] = float(t)
        else:
            windows.append([float(t), float(t)])
    return [(a, b) for a, b in windows]


def trim_bag(source: Path, dest: Path, windows: Sequence[tuple[float, float]], pad_s: float = 0.1,
             context_s: float = 1.5) -> int:
    """Copy the messages of ``source`` that fall in ``windows`` (bag time, s) into a new mcap bag ``dest``,
    byte for byte; returns how many were copied."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from .data.rosbag_io import BAG_VERSION, ros2_typestore

    w = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    store = ros2_typestore()
    copied = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with AnyReader([source], default_typestore=store) as reader:
        writer = Writer(dest, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        try:
            connections: dict[int, Any] = {}
            for conn, t_ns, raw in reader.messages():
                pad = pad_s if conn.msgtype in _FRAME_TYPES else context_s
                t = t_ns * 1e-9
                if not ((w[:, 0] - pad <= t) & (t <= w[:, 1] + pad)).any():
                    continue
                if conn.id not in connections:
                    connections[conn.id] = writer.add_connection(conn.topic, conn.msgtype, typestore=store)
                writer.write(connections[conn.id], t_ns, raw)
                copied += 1
        finally:
            writer.close()
    return copied


def region_bag(world: Path, run: str, region: str, folder: Path) -> Path:
    """The bag of ``run``: the world's own for region ``all``, else a copy trimmed to the region's frames in
    ``folder/<run>`` (made once)."""
    from .data.synthetic import load_synthetic

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


def _ros_missing() -> str | None:
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


def stage_map(demo: Demo) -> dict:
    reason = _ros_missing()
    if reason:
        return demo.skip(reason)
    s = demo.settings.mapping
    info = _run_info(demo, s.run)

    def build(out: Path) -> dict:
        from .ros.node_process import ReplayError
        from .ros.replay_mapping import run_mapping

        bag = region_bag(_world(demo), s.run, s.region, out / "bags")
        try:
            summary = run_mapping(bag, demo.folder("teacher") / "best", demo.folder("student") / "best",
                                  out / "map", rate=s.rate, max_gap_s=s.max_gap_s, odom_lead_s=s.odom_lead_s,
                                  max_unpaired=s.max_unpaired,
                                  overrides={**s.node, "map.resume": False}, out_dir=out, progress=demo.progress)
        except ReplayError as e:
            raise DemoError(f"map stage: {e}") from None
        return {**summary, "condition": info["condition"], "direction": info["direction"], "region": s.region}

    return demo.cached({"world": demo.ids["world"], "teacher": demo.ids["teacher"], "student": demo.ids["student"],
                        "settings": s.model_dump(mode="json")}, build, required=["map", "mapping.json"])


def stage_localize(demo: Demo) -> dict:
    reason = _ros_missing()
    if reason:
        return demo.skip(reason)
    if "skipped" in demo.results["map"]:
        return demo.skip("no map")
    s = demo.settings.localization
    info = _run_info(demo, s.run)

    def build(out: Path) -> dict:
        from .ros.node_process import ReplayError
        from .ros.replay_localization import run_replay

        bag = region_bag(_world(demo), s.run, s.region, out / "bags")
        try:
            metrics = run_replay(bag, demo.folder("map") / "map", demo.folder("export") / "student.onnx", hz=s.hz,
                                 overrides=s.node, out_dir=out / "replay", correct_m=GroundTruthConfig().correct_m)
        except ReplayError as e:
            raise DemoError(f"localize stage: {e}") from None
        map_bag = region_bag(_world(demo), demo.settings.mapping.run, demo.settings.mapping.region,
                             demo.folder("map") / "bags")
        replay_plots(out, bag, map_bag, demo.folder("map") / "map", metrics)
        return {**metrics, "condition": info["condition"], "direction": info["direction"], "region": s.region}

    return demo.cached({"world": demo.ids["world"], "map": demo.ids["map"], "export": demo.ids["export"],
                        "settings": s.model_dump(mode="json")}, build,
                       required=["replay/metrics.json", "pr.png", "matches.png", "latency.png"])


def replay_plots(out: Path, bag: Path, map_bag: Path, map_path: Path, metrics: dict) -> None:
    """``pr.png`` (top-1 PR with AUC and max F1), ``latency.png`` and ``matches.png`` (queries of the replayed
    bag beside the map keyframes the node ranked first, from the mapping bag) of a localization replay."""
    from .evaluation.metrics import precision_recall
    from .evaluation.plots import plot_latency, plot_match_grid, plot_pr
    from .evaluation.replay_metrics import pick_match_examples
    from .mapping.database import PlaceDatabase
    from .pipeline.offline import open_bag_sequence

    q = dict(np.load(out / "replay" / "queries.npz"))
    answered = q["answered"]
    if answered.any():
        pr = precision_recall(q["top1_score"][answered], q["top1_correct"][answered], q["has_match"][answered])
        curve = {"localization node, top-1 score": (pr["precision"], pr["recall"], pr["auc"])}
    else:
        curve = {}
    plot_pr(curve, out / "pr.png", highlight=list(curve),
            title=f"Localization replay: top-1 PR (AUC {metrics['pr_auc']:.3f}, max F1 {metrics['max_f1']:.3f})")
    plot_latency(q["latency_s"][answered] * 1e3, out / "latency.png",
                 title=f"Localization node: image published -> candidates received ({metrics['answered']} frames)")
    db = PlaceDatabase.load(map_path)
    map_seq = open_bag_sequence(map_bag)
    query_seq = open_bag_sequence(bag)
    pairs = []
    for i, kf, ok in pick_match_examples(q):
        qi = int(np.argmin(np.abs(query_seq.timestamps - q["stamps"][i])))
        mi = int(np.argmin(np.abs(map_seq.timestamps - db.stamps[kf])))
        distance = float(np.hypot(*(q["query_xy"][i] - db.positions[kf][:2])))
        pairs.append((query_seq.image(qi), map_seq.image(mi), ok, f"{distance:.1f} m"))
    plot_match_grid(pairs, out / "matches.png",
                    title=f"{query_seq.run} query -> top-1 map keyframe ({map_seq.run}), distance to the query")


# --------------------------------------------------------------------------------------------------
# 7-8. offline evaluation, Corridor
# --------------------------------------------------------------------------------------------------

#: Keys of an evaluation kept in the demo's results.
_EVAL_KEYS = ("recall@1", "recall@5", "recall@10", "recall@25", "recall@1%", "recall_curve", "num_pairs",
              "num_queries")


def stage_evaluate(demo: Demo) -> dict:
    from .evaluation.evaluate import run_evaluate
    from .evaluation.plots import plot_recall_at_n

    region = demo.settings.evaluate.region
    models = {"teacher": "teacher (camera+LiDAR)", "student": "student (camera only)"}

    def build(out: Path) -> dict:
        result = {}
        for role in models:
            m = run_evaluate(demo.folder(role) / "best", _world(demo), region=region, out_dir=out / role,
                             progress=demo.progress)
            result[role] = {**{k: m[k] for k in _EVAL_KEYS},
                            "per_condition": {c: {k: r[k] for k in ("recall@1", "recall@5", "num_queries")}
                                              for c, r in m["per_condition"].items()}}
        method = demo.results["student"].get("method", "sc").upper()
        plot_recall_at_n({f"{models['teacher']}": result["teacher"]["recall_curve"],
                          f"{models['student']}, DistilVPR-{method}": result["student"]["recall_curve"]},
                         out / "recall_at_n.png", title=f"Cross-run Recall@N, {region} region")
        return {**result, "region": region}

    return demo.cached({"world": demo.ids["world"], "teacher": demo.ids["teacher"], "student": demo.ids["student"],
                        "region": region}, build, required=["recall_at_n.png", "student/matches.png"])


def stage_corridor(demo: Demo) -> dict:
    from .evaluation.corridor import CORRIDOR_ROOT, run_corridor

    root = demo.settings.corridor.root or CORRIDOR_ROOT
    if not Path(root).is_dir():
        return demo.skip(f"Corridor data not found at {root} (VPR-Bench Corridor; see ../shared/data/corridor)")

    def build(out: Path) -> dict:
        r = run_corridor(demo.folder("student") / "best", root=Path(root), out_dir=out, progress=demo.progress)
        return {k: r[k] for k in ("method", "recall@1", "recall@5", "pr_auc", "max_f1", "recall@100p", "rank",
                                  "peers")}

    return demo.cached({"student": demo.ids["student"], "root": str(Path(root).resolve())}, build,
                       required=["corridor.png"])


STAGES: tuple[tuple[str, str, Callable[[Demo], dict]], ...] = (
    ("world", "generate (or reuse) the synthetic camera+LiDAR world", stage_world),
    ("teacher", "train the camera+LiDAR teacher", stage_teacher),
    ("student", "distil the camera-only student (DistilVPR)", stage_student),
    ("export", "export the student to ONNX", stage_export),
    ("map", "build the place map through the mapping node (bag -> DDS -> node)", stage_map),
    ("localize", "replay a bag of another condition through the localization node", stage_localize),
    ("evaluate", "offline cross-run Recall@N, teacher vs student", stage_evaluate),
    ("corridor", "real-image check on VPR-Bench Corridor", stage_corridor),
)


# --------------------------------------------------------------------------------------------------
# 9. report
# --------------------------------------------------------------------------------------------------


def _seen_conditions(demo: Demo) -> set[str] | None:
    """Conditions the teacher or the student trained on (None: all of them)."""
    seen: set[str] = set()
    for role in ("teacher", "student"):
        conditions = _train_config(demo, role, demo.folder(role)).data.train_conditions
        if conditions is None:
            return None
        seen |= set(conditions)
    return seen


def _fmt(value: Any, spec: str = ".3f") -> str:
    from .evaluation.report import format_value

    return format_value(value, spec)


def _copy(src: Path, out: Path, name: str) -> str | None:
    """Copy a PNG into the report folder; its name there, or None when there is none."""
    if not src.is_file():
        return None
    shutil.copy(src, out / name)
    return name


def write_report(demo: Demo, results_root: Path, seconds: float) -> Path:
    """``report.md``, ``summary.json`` and the PNGs in a fresh ``<results_root>/demo/<timestamp>/``."""
    from .evaluation.report import markdown_table

    out = make_run_dir(results_root, "demo")
    r, s, w = demo.results, demo.settings, demo.folder
    world = r["world"]
    images = {name: _copy(src, out, name) for name, src in (
        ("preview.png", w("world") / "preview.png"),
        ("recall_at_n.png", w("evaluate") / "recall_at_n.png"),
        ("matches_offline.png", w("evaluate") / "student" / "matches.png"),
        ("pr.png", w("localize") / "pr.png"),
        ("trajectory.png", w("localize") / "replay" / "trajectory.png"),
        ("trajectory_top1.png", w("localize") / "replay" / "trajectory_top1.png"),
        ("matches.png", w("localize") / "matches.png"),
        ("latency.png", w("localize") / "latency.png"),
        ("corridor.png", w("corridor") / "corridor.png"),
        ("teacher_training.png", w("teacher") / "training.png"),
        ("student_training.png", w("student") / "training.png"))}

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if images.get(name) else []

    lines = [f"# distilvpr demo ({demo.name}: {world['preset']} world)", "",
             f"Total {seconds:.0f} s. Settings: section `{demo.name}` of `config/demo.yaml` (below); work folder "
             f"`{demo.work}` (stages whose inputs did not change are reused on the next run).", "",
             "## Stages", "",
             markdown_table([{**e, "seconds": e["seconds"] if e["status"] == "ran" else e.get("built_in_s"),
                              "note": e.get("note", "")} for e in demo.log],
                            {"stage": "stage", "status": "status", "seconds": "seconds (when built)", "note": "note"},
                            {"seconds": ".1f"}),
             "## World", "",
             f"`{world['world']}`: runs " + ", ".join(f"{k} ({v['condition']}, direction {v['direction']:+d})"
                                                      for k, v in world["runs"].items()) + ".", "",
             "| region | runs | frames | mean positives / frame | cross-run pairs | queries with a true match |",
             "|---|---|---|---|---|---|"]
    for region, g in world["ground_truth"].items():
        lines.append(f"| {region} | {g['runs']} | {g['frames']} | {g.get('mean_positives_per_frame', 0):.1f} | "
                     f"{g.get('cross_run_pairs', 0)} | {g.get('queries_with_a_true_match', '-')} |")
    lines += [""] + image("preview.png", "world preview")

    # training + offline evaluation
    t, st, ev = r["teacher"], r["student"], r["evaluate"]
    rows = [{"model": "teacher (camera+LiDAR)", **ev["teacher"], "val": t["val/recall@1"], "epochs": t["epochs"],
             "train_s": t["train_seconds"]},
            {"model": f"student (camera only, DistilVPR-{st.get('method', 'sc').upper()})", **ev["student"],
             "val": st["val/recall@1"], "epochs": st["epochs"], "train_s": st["train_seconds"]}]
    lines += ["## Teacher vs student: offline cross-run Recall@N", "",
              f"{ev['region']} region (never used for training or model selection): each run is the database for "
              f"the queries of every other run; a retrieval is correct within "
              f"{world['ground_truth_config']['correct_m']:g} m; mean over {ev['student']['num_pairs']} ordered "
              f"run pairs ({ev['student']['num_queries']} queries).", "",
              markdown_table(rows, {"model": "model", "recall@1": "R@1", "recall@5": "R@5", "recall@10": "R@10",
                                    "recall@25": "R@25", "recall@1%": "R@1%", "val": "val AR@1 (selection)",
                                    "epochs": "epochs", "train_s": "training s"}, {"train_s": ".0f"})]
    conditions = sorted(ev["student"]["per_condition"])
    if conditions:
        seen = _seen_conditions(demo)
        lines += ["R@1 by query condition" + (" (* = never seen in training):" if seen else ":"), "",
                  "| model | " + " | ".join(f"{c}{'*' if seen and c not in seen else ''}" for c in conditions) + " |",
                  "|---|" + "---|" * len(conditions)]
        for role, label in (("teacher", "teacher"), ("student", "student")):
            lines.append(f"| {label} | " + " | ".join(_fmt(ev[role]["per_condition"][c]["recall@1"])
                                                      for c in conditions) + " |")
        lines.append("")
    lines += image("recall_at_n.png", "Recall@N teacher vs student")
    lines += image("matches_offline.png", "student: query -> top-1 (offline)")

    # mapping node
    lines += ["## Mapping node (teacher + student, camera + LiDAR)", ""]
    m = r["map"]
    if "skipped" in m:
        lines += [f"Skipped: {m['skipped']}.", ""]
    else:
        node = m["node"]
        why = ("the whole run" if m["region"] == "all" else
               "only its test-region frames: the area never used for training or model selection, so the "
               "localization replay below scores the models on places they have not learnt"
               if m["region"] == "test" else f"only its {m['region']}-region frames")
        lines += [f"Bag `{Path(m['bag']).name}` ({m['condition']}, direction {m['direction']:+d}): {why}. Played "
                  f"over DDS into `distilvpr_mapping` at {m['rate']:g}x real time "
                  f"({sum(m['published'].values())} messages: "
                  + ", ".join(f"{v} {k}" for k, v in m["published"].items()) + ").", "",
                  "| keyframes in the map | camera+LiDAR pairs | drops | missing odometry | "
                  "keyframe latency p50 / p99 (ms) | loop closures (teacher space) | node memory (MB) |",
                  "|---|---|---|---|---|---|---|",
                  f"| {m['map_size']} | {int(node.get('pairs', 0))} | {int(node.get('drops', 0))} | "
                  f"{int(node.get('missing_odometry', 0))} | {_fmt(node.get('latency_ms_p50'), '.1f')} / "
                  f"{_fmt(node.get('latency_ms_p99'), '.1f')} | {len(m['loop_closures'])} | "
                  f"{_fmt(m.get('node_rss_mb_max'), '.0f')} |", ""]

    # localization node
    lines += ["## Localization node (student only, camera, ONNX Runtime)", ""]
    loc = r["localize"]
    if "skipped" in loc:
        lines += [f"Skipped: {loc['skipped']}.", ""]
    else:
        where = ("all its frames, places seen in training included (optimistic)" if loc["region"] == "all" else
                 f"only its {loc['region']}-region frames")
        lines += [f"Bag `{Path(loc['bag']).name}` ({loc['condition']}, direction {loc['direction']:+d}; {where}) "
                  f"played at {s.localization.hz:g} frames/s into `distilvpr_localization` against the map above "
                  f"({loc['map_size']} keyframes, built in another condition); what the node published is scored "
                  f"against the bag's odometry (correct within {loc['correct_m']:g} m).", "",
                  markdown_table([loc], {"frames": "frames", "recall@1": "R@1", "pr_auc": "PR AUC",
                                         "max_f1": "max F1", "recall@100p": "R@100%P",
                                         "accepted_precision": "accepted precision",
                                         "accepted_recall": "accepted recall", "loop_closures": "loop closures"}),
                  "| latency p50 (ms) | latency p99 (ms) | rate (Hz) | input (Hz) | dropped frames "
                  "| node memory (MB) |",
                  "|---|---|---|---|---|---|",
                  f"| {_fmt(loc['latency_ms_p50'], '.1f')} | {_fmt(loc['latency_ms_p99'], '.1f')} | "
                  f"{_fmt(loc['rate_hz'], '.1f')} | {_fmt(loc.get('input_hz'), '.1f')} | {loc['dropped_frames']} | "
                  f"{_fmt(loc.get('node_rss_mb_max'), '.0f')} |", "",
                  "Latency: image published → `place_candidates/scores` received (same machine, one clock): "
                  "transport, decoding, inference, matching. Accepted = the node's `place_match` after its "
                  "threshold and sequence check; PR curve and max F1 sweep the top-1 score instead.", ""]
        lines += image("pr.png", "PR curve")
        lines += ["Trajectory of the replayed run over the map, with an edge from each query to the keyframe "
                  "matched, green when within the correct distance, red otherwise: first the node's accepted "
                  "matches (its `loop_closure` / `place_match` outputs), then every top-1 candidate.", ""]
        lines += image("trajectory.png", "accepted matches") + image("trajectory_top1.png", "top-1 candidates")
        lines += image("matches.png", "query -> matched keyframe") + image("latency.png", "latency")

    # Corridor
    lines += ["## Real images: VPR-Bench Corridor", ""]
    c = r["corridor"]
    if "skipped" in c:
        lines += [f"Skipped: {c['skipped']}.", ""]
    else:
        ours = f"**{c['method']} (demo student)**"
        table = sorted([{**c, "method": ours}] + [{"method": k, **v} for k, v in c["peers"].items()],
                       key=lambda row: -row["recall@1"])
        lines += [f"The demo's student (trained on the synthetic world only) on 111 real indoor queries, rank "
                  f"{c['rank']} of {len(table)} by R@1; peers' rows are recomputed by the same code from their "
                  "published similarity matrices.", "",
                  markdown_table(table, ["method", "recall@1", "recall@5", "pr_auc", "max_f1"])]
        lines += image("corridor.png", "Corridor R@1")

    lines += ["## Training curves", ""]
    lines += image("teacher_training.png", "teacher") + image("student_training.png", "student")
    settings_yaml = yaml.safe_dump({demo.name: s.model_dump(mode="json")}, sort_keys=False).rstrip()
    lines += ["## Settings", "", "```yaml", settings_yaml, "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    write_json(out / "summary.json", {"name": demo.name, "preset": world["preset"], "world": world["world"],
                                      "ground_truth": world["ground_truth"], "work": str(demo.work),
                                      "seconds": round(seconds, 1), "stages": demo.log,
                                      **{k: v for k, v in r.items() if k != "world"}})
    return out


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def _banner(index: int, total: int, name: str, what: str) -> None:
    print(f"\n[demo] ===== {index}/{total} {name}: {what} =====", flush=True)


def run_demo(quick: bool = False, results_root: Path = Path("results"), data_root: Path = Path("data"),
             config: str | Path | None = None, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the chained demo; returns the report folder (``<results_root>/demo/<timestamp>``)."""
    started = time.perf_counter()
    name = "quick" if quick else "default"
    settings = load_demo_settings(config, name)
    demo = Demo(name, settings, Path(data_root), Path(results_root) / "demo" / f"work_{name}", progress, fresh)
    demo.work.mkdir(parents=True, exist_ok=True)
    total = len(STAGES) + 1
    for index, (stage, what, func) in enumerate(STAGES, 1):
        _banner(index, total, stage, what)
        demo.current = stage
        demo.results[stage] = func(demo)
    _banner(total, total, "report", "write the report")
    out = write_report(demo, Path(results_root), time.perf_counter() - started)
    print(_console_summary(demo))
    print(f"\n[demo] report: {out / 'report.md'}  ({time.perf_counter() - started:.0f} s)")
    return out


def _console_summary(demo: Demo) -> str:
    """A few lines of the headline numbers for the terminal."""
    r = demo.results
    ev = r["evaluate"]
    lines = [f"\n[demo] offline {ev['region']} region: teacher R@1 {_fmt(ev['teacher']['recall@1'])}, "
             f"student R@1 {_fmt(ev['student']['recall@1'])}"]
    loc = r["localize"]
    if "skipped" not in loc:
        lines.append(f"[demo] localization node on {Path(loc['bag']).name}: R@1 {_fmt(loc['recall@1'])}, PR AUC "
                     f"{_fmt(loc['pr_auc'])}, max F1 {_fmt(loc['max_f1'])}, latency p50/p99 "
                     f"{_fmt(loc['latency_ms_p50'], '.1f')}/{_fmt(loc['latency_ms_p99'], '.1f')} ms")
    c = r["corridor"]
    lines.append(f"[demo] Corridor: R@1 {_fmt(c['recall@1'])}, rank {c['rank']}" if "skipped" not in c
                 else f"[demo] Corridor: skipped ({c['skipped']})")
    return "\n".join(lines)
