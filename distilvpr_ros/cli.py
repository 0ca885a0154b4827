"""The ``distilvpr`` command: one entry point for everything the package does offline.

Each sub-command is a thin wrapper over a library function (the ROS nodes call the same
functions), so what the CLI does can also be scripted from Python.
"""

from __future__ import annotations

import os

# Idle OpenMP threads (torch, faiss) sleep instead of spinning; set before either loads (pipeline.embedder
# .configure_threads says why). A value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from .config import (CORRECT_M, ConfigError, check_keys, config_yaml, load_yaml, merge_config,  # noqa: E402
                     validation_message)
from .data.errors import DataError  # noqa: E402


def _world_config(args: argparse.Namespace):
    from .data.world.config import load_world_config

    return load_world_config(args.preset, args.config, args.seed)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .data.world.generate import generate_world
    from .data.world.preview import make_preview

    if args.out is None:
        raise ValueError("--out is required (unless --dump-config)")
    summary = generate_world(Path(args.out), _world_config(args), bag_storage=args.bag_storage,
                             write_bags=not args.no_bags, progress=not args.quiet)
    if args.preview:
        summary["preview"] = str(make_preview(Path(args.out)))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from .data.world.preview import make_preview

    print(make_preview(Path(args.world)))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import summarize_dataset

    print(json.dumps(summarize_dataset(Path(args.path)), indent=2, default=str))
    return 0


def _train_config(args: argparse.Namespace):
    """TrainConfig from --config YAML, then the command's own flags, then ``key=value`` overrides."""
    from .training.config import TrainConfig

    overrides = {k: v for k, v in _train_flags(args).items() if v is not None}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.epochs=5)")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not YAML ({e.__class__.__name__})") from None
    check_keys(TrainConfig, merge_config(load_yaml(args.config) if args.config else {}, overrides), args.config)
    return TrainConfig.from_yaml(args.config, overrides)


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"data.root": args.world, "out_dir": args.out, "resume": args.resume or None}
    if args.command == "distill":
        flags.update({"distill.teacher": args.teacher, "distill.method": args.method,
                      "distill.student": args.student})
    return flags


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from .training.trainer import train_teacher

    print(train_teacher(_train_config(args)))
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .training.trainer import train_student

    print(train_student(_train_config(args)))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.submap import SubmapConfig
    from .evaluation.evaluate import run_evaluate
    from .evaluation.report import to_jsonable

    metrics = run_evaluate(Path(args.checkpoint), Path(args.root), region=args.region,
                           out_dir=None if args.out is None else Path(args.out), batch_size=args.batch_size,
                           head=args.head, source=args.source, sequences=args.sequences,
                           images_root=args.images_root, results_root=Path(args.results),
                           submap=SubmapConfig(length_m=args.submap_length_m, window=args.submap_window))
    print(json.dumps({**{k: v for k, v in metrics.items() if k.startswith("recall@")},
                      "headline": to_jsonable(metrics["headline"])}, indent=2))
    return 0


def _cmd_corridor(args: argparse.Namespace) -> int:
    from .evaluation.corridor import CORRIDOR_ROOT, run_corridor
    from .verification.two_view import TwoViewConfig

    metrics = run_corridor(args.model, root=Path(args.root) if args.root else CORRIDOR_ROOT,
                           out_dir=None if args.out is None else Path(args.out), results_root=Path(args.results),
                           rerank_top_k=args.rerank_top_k, two_view=TwoViewConfig(features=args.rerank_features))
    print(json.dumps({k: v for k, v in metrics.items() if k.split("_")[0] in ("recall@1", "recall@5", "pr", "rank")},
                     indent=2))
    return 0


def _build_map_config(args: argparse.Namespace):
    from .pipeline.config import load_node_config

    overrides = {"map.path": str(args.out), "models.teacher_checkpoint": str(args.teacher),
                 "models.student_checkpoint": str(args.student), **({"map.resume": False} if args.fresh else {}),
                 **({"map.run": args.run} if args.run else {}),
                 **({"submap.length_m": args.submap_length_m} if args.submap_length_m is not None else {})}
    return load_node_config(args.config, "distilvpr_mapping", **overrides)


def _cmd_build_map(args: argparse.Namespace) -> int:
    from .pipeline.offline import build_map_from_sequence, open_bag_sequence

    cfg = _build_map_config(args)
    sequence = open_bag_sequence(Path(args.bag), cfg, args.run)
    if args.anchor_to_map:
        from .pipeline.multisession import AlignmentError
        from .pipeline.offline import extend_map_anchored

        try:
            summary = extend_map_anchored(sequence, Path(args.teacher), Path(args.student), Path(args.anchor_to_map),
                                          Path(args.out), cfg, progress=True)
        except AlignmentError as e:
            print(f"build-map: the session was not anchored to {args.anchor_to_map}: {e}", file=sys.stderr)
            return 1
    else:
        summary = build_map_from_sequence(sequence, Path(args.teacher), Path(args.student), Path(args.out), cfg,
                                          progress=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_merge_maps(args: argparse.Namespace) -> int:
    from .pipeline.multisession import AlignmentConfig, AlignmentError, merge_maps

    try:
        summary = merge_maps(args.a, args.b, args.out, AlignmentConfig(min_anchors=args.min_anchors,
                                                                       max_pairs=args.max_pairs))
    except AlignmentError as e:
        print(f"merge-maps: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .models.export import export_model

    print(export_model(Path(args.checkpoint), Path(args.out)))
    return 0


def _replay_config(args: argparse.Namespace):
    from .ros.replay_localization import replay_config

    return replay_config(Path(args.bag), Path(args.map), Path(args.model), args.backend, args.config)


def _cmd_replay(args: argparse.Namespace) -> int:
    from .evaluation.replay_metrics import REPLAY_KEYS
    from .ros.node_process import ReplayError
    from .ros.replay_localization import run_replay

    try:
        metrics = run_replay(args.bag, args.map, args.model, rate=args.rate, backend=args.backend, config=args.config,
                             out_dir=args.out, results_root=args.results, correct_m=args.correct_m)
    except ReplayError as e:
        print(f"distilvpr replay: {e}", file=sys.stderr)
        return 1
    print(json.dumps({**{k: metrics[k] for k in REPLAY_KEYS}, "out": metrics["out"]}, indent=2))
    return 0


def _demo_settings(args: argparse.Namespace):
    from .demo import load_demo_settings

    return load_demo_settings(args.config, "quick" if args.quick else "default")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    try:
        run_demo(quick=args.quick, results_root=Path(args.results), data_root=Path(args.data), config=args.config,
                 fresh=args.fresh)
    except DemoError as e:  # a ROS node did not start or died: the message names its log
        print(f"distilvpr demo: {e}", file=sys.stderr)
        return 1
    return 0


def _pose_graph_config(args: argparse.Namespace):
    from .slam.pose_graph import PoseGraphConfig

    return PoseGraphConfig(robust=args.robust, stamp_tolerance_s=args.stamp_tolerance)


def _cmd_pose_graph(args: argparse.Namespace) -> int:
    from .slam.offline import run_pose_graph

    metrics = run_pose_graph(args.odom, args.loops, odom_topic=args.odom_topic, ground_truth=args.ground_truth,
                             gt_topic=args.gt_topic, config=_pose_graph_config(args), align=args.align,
                             rpe_delta=args.rpe_delta, rpe_unit=args.rpe_unit, out_dir=args.out,
                             results_root=args.results)
    keys = ("keyframes", "loops", "accepted", "down-weighted", "rejected", "seconds", "ate_reduction", "out")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    return 0


def _slam_eval_config(args: argparse.Namespace):
    from .slam.evaluate import SlamEvalConfig
    from .slam.pose_graph import PoseGraphConfig

    return SlamEvalConfig(pose_graph=PoseGraphConfig(robust=args.robust), align=args.align)


def _cmd_slam_eval(args: argparse.Namespace) -> int:
    from .pipeline.config import load_node_config
    from .slam.evaluate import run_slam_eval

    node = load_node_config(args.config, "distilvpr_mapping") if args.config else None
    m = run_slam_eval(args.world, Path(args.teacher), Path(args.student), run_index=args.run, node_config=node,
                      config=_slam_eval_config(args), out_dir=args.out, results_root=args.results, progress=True,
                      plant_wrong=args.plant_wrong)
    print(json.dumps({"keyframes": m["keyframes"], "length_m": m["length_m"], "loops": m["loops"],
                      "ate_rmse_odometry_m": m["odometry"]["ate_rmse_m"],
                      "ate_rmse_optimized_m": m["optimized"]["ate_rmse_m"], "ate_reduction": m["ate_reduction"],
                      "out": m["out"]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distilvpr", description=__doc__.splitlines()[0],
                                epilog="Every command takes --dump-config: print its effective configuration "
                                       "(defaults + file + arguments) as YAML and exit.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate the synthetic camera+LiDAR world (dataset folders + ROS 2 bags)")
    g.add_argument("--out", help="output folder")
    g.add_argument("--preset", default="default", help="tiny | default | large | town (default: default)")
    g.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    g.add_argument("--config", type=Path, default=None, help="YAML file overriding preset values")
    g.add_argument("--bag-storage", choices=["mcap", "sqlite3"], default="mcap", help="rosbag2 storage plugin")
    g.add_argument("--no-bags", action="store_true", help="write the dataset folders only")
    g.add_argument("--preview", action="store_true", help="also write preview.png (contact sheet)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    v = sub.add_parser("preview", help="draw preview.png for a generated world")
    v.add_argument("world", help="folder written by `distilvpr generate`")
    v.set_defaults(func=_cmd_preview)

    i = sub.add_parser("inspect", help="summarise a dataset folder or a ROS 2 bag")
    i.add_argument("path")
    i.set_defaults(func=_cmd_inspect)

    for name, func, help_ in (
        ("train-teacher", _cmd_train_teacher, "train the camera+LiDAR teacher (DistilVPR)"),
        ("distill", _cmd_distill, "distil a teacher into a camera-only (or LiDAR-only) student"),
    ):
        t = sub.add_parser(name, help=help_, description=help_ + ". Every TrainConfig key can be set with "
                           "key=value (dotted, YAML values), e.g. optim.epochs=10 model.image_size=[160,120].")
        t.add_argument("--config", type=Path, default=None, help="YAML TrainConfig (paper defaults when omitted)")
        t.add_argument("--world", default=None, help="synthetic world folder (sets data.root)")
        t.add_argument("--out", default=None, help="run folder (default: results/<command>/<timestamp>)")
        t.add_argument("--resume", action="store_true", help="continue from <out>/last")
        if name == "distill":
            t.add_argument("--teacher", default=None, help="teacher checkpoint folder (e.g. <teacher run>/best)")
            t.add_argument("--method", default=None,
                           help="none | s | c | sc | kd | afd | epc | rkd | csd | lsd | mkd | pkt | sp (default sc)")
            t.add_argument("--student", default=None, help="camera_student (default) | lidar_student")
        t.add_argument("overrides", nargs="*", help="key=value overrides of the TrainConfig")
        t.set_defaults(func=func)

    from .data.sources import DATA_SOURCES

    e = sub.add_parser("evaluate", help="cross-run Recall@N of a checkpoint on a synthetic world region, bags or "
                       "a dataset")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (teacher or student), or a classical LiDAR kind: ring_key | "
                   "scan_context_fft")
    e.add_argument("--source", choices=DATA_SOURCES, default="synthetic", help="data reader (default: synthetic)")
    e.add_argument("--world", "--root", dest="root", required=True,
                   help="folder written by `distilvpr generate`, or the root of the bags / dataset")
    e.add_argument("--region", default="test",
                   help="synthetic: train | val | test | all (every frame; default: test)")
    e.add_argument("--sequences", nargs="+", default=[],
                   help="bags/oxford/boreas/kitti: the runs to evaluate (bag folders under --root, sequence names)")
    e.add_argument("--images-root", type=Path, default=None, help="oxford: RobotCar image folders")
    e.add_argument("--head", default="fused", help="descriptor head: fused | image | cloud (teacher only)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--submap-length-m", type=float, default=0.0, metavar="D",
                   help="LiDAR submaps of D metres of travel instead of single scans (default 0: single scans)")
    e.add_argument("--submap-window", choices=("trailing", "centred"), default="trailing",
                   help="where the D metres lie: driven up to the scan (default, as online) or +-D/2 around it")
    e.add_argument("--out", default=None, help="output folder (default: results/evaluate/<timestamp>)")
    e.add_argument("--results", default="results", help="results root (default: results)")
    e.set_defaults(func=_cmd_evaluate)

    c = sub.add_parser("corridor", help="zero-shot check on the real Corridor images beside 10 published methods")
    c.add_argument("--model", default="lite0-imagenet",
                   help="checkpoint folder of a camera model, or lite0-imagenet (ImageNet Lite0 + GeM, untrained)")
    c.add_argument("--root", default=None, help="VPR-Bench folder (default: ../shared/data/corridor)")
    c.add_argument("--out", default=None, help="output folder (default: results/corridor/<timestamp>)")
    c.add_argument("--results", default="results", help="results root (default: results)")
    c.add_argument("--rerank-top-k", type=int, default=10,
                   help="re-rank each query's top-k by 2D-2D geometric verification (default 10; 0: off)")
    c.add_argument("--rerank-features", choices=("orb", "sift"), default="orb", help="local features for re-ranking")
    c.set_defaults(func=_cmd_corridor)

    b = sub.add_parser("build-map", help="build a place map from a bag offline, as the mapping node does live")
    b.add_argument("--bag", required=True, help="rosbag2 folder or .mcap/.db3 file")
    b.add_argument("--teacher", required=True, help="loop-closure model: teacher or LiDAR-student checkpoint folder, "
                   "or a classical LiDAR kind: ring_key | scan_context_fft")
    b.add_argument("--student", required=True, help="camera student checkpoint folder")
    b.add_argument("--out", required=True, help="map folder (extended if it exists, unless --fresh)")
    b.add_argument("--config", default=None, help="node YAML (e.g. config/mapping.yaml): topics, keyframes, index")
    b.add_argument("--run", default=None, help="run name stored with the keyframes (default: the bag's name)")
    b.add_argument("--fresh", action="store_true", help="replace an existing map instead of extending it")
    b.add_argument("--submap-length-m", type=float, default=None, metavar="D",
                   help="the teacher reads the previous keyframes' scans over the trailing D metres of odometry "
                   "(submap.length_m; default: the config's, 0 = single scans)")
    b.add_argument("--anchor-to-map", default=None, metavar="MAP",
                   help="a new session: map the bag in its own frame, align it to the saved MAP by LiDAR-verified "
                   "matches and write MAP plus its keyframes (in MAP's frame) to --out (may be MAP); exit 1, "
                   "nothing written, when too few matches anchor it")
    b.set_defaults(func=_cmd_build_map)

    mm = sub.add_parser("merge-maps", help="merge two maps built in different sessions into the first one's frame "
                        "(transform from LiDAR-verified cross-session matches)")
    mm.add_argument("--a", required=True, help="map whose frame the merged map keeps")
    mm.add_argument("--b", required=True, help="map moved into --a's frame (same models, other runs)")
    mm.add_argument("--out", required=True, help="merged map folder (written atomically; may be --a)")
    mm.add_argument("--min-anchors", type=int, default=3,
                    help="verified matches that must agree on the transform (default 3)")
    mm.add_argument("--max-pairs", type=int, default=60,
                    help="best-scoring cross-session matches verified by LiDAR registration at most (default 60)")
    mm.set_defaults(func=_cmd_merge_maps)

    x = sub.add_parser("export", help="export a checkpoint to ONNX for the localization node's ONNX Runtime backend")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True, help="output .onnx file")
    x.set_defaults(func=_cmd_export)

    r = sub.add_parser("replay", help="play a bag into the localization node over DDS and score what it publishes")
    r.add_argument("--bag", required=True, help="rosbag2 folder or .mcap/.db3 file (camera + odometry as ground truth)")
    r.add_argument("--map", required=True, help="map folder built with the same student")
    r.add_argument("--model", required=True, help="camera student: checkpoint folder (torch) or .onnx file")
    r.add_argument("--rate", type=float, default=1.0, help="playback speed, x real time (default 1)")
    r.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                   help="student backend (default: onnxruntime for a .onnx model, else torch)")
    r.add_argument("--config", default=None, help="node YAML (e.g. config/localization.yaml): matcher, QoS, topics")
    r.add_argument("--correct-m", type=float, default=CORRECT_M, help="a match is correct within this distance (m)")
    r.add_argument("--out", default=None, help="output folder (default: results/replay/<timestamp>)")
    r.add_argument("--results", default="results", help="results root (default: results)")
    r.set_defaults(func=_cmd_replay)

    pg = sub.add_parser("pose-graph", help="optimise odometry with loop closures (gtsam, robust kernel) and score "
                        "it against ground truth (evo ATE/RPE)")
    pg.add_argument("--odom", required=True,
                    help="odometry: TUM file, or a bag (folder or .mcap/.db3) with --odom-topic")
    pg.add_argument("--odom-topic", default="/odom", help="nav_msgs/Odometry topic when --odom is a bag")
    pg.add_argument("--loops", required=True, help="loop closures: .json or .csv (t_query, t_match, match_T_query, "
                    "6x6 covariance; README 'Pose graph')")
    pg.add_argument("--ground-truth", default=None, help="optional ground truth: TUM file or bag (with --gt-topic)")
    pg.add_argument("--gt-topic", default="/odom", help="nav_msgs/Odometry topic when --ground-truth is a bag")
    pg.add_argument("--robust", choices=["gnc", "cauchy", "huber", "none"], default="gnc",
                    help="robust kernel on the loops (default gnc: rejects wrong loops)")
    pg.add_argument("--stamp-tolerance", type=float, default=1e-3,
                    help="a loop stamp matches a keyframe within this (s)")
    pg.add_argument("--align", choices=["se3", "sim3", "none"], default="se3",
                    help="alignment before ATE (default se3)")
    pg.add_argument("--rpe-delta", type=float, default=10.0, help="RPE step (default 10)")
    pg.add_argument("--rpe-unit", choices=["frames", "m"], default="frames", help="unit of --rpe-delta")
    pg.add_argument("--out", default=None, help="output folder (default: results/pose_graph/<timestamp>)")
    pg.add_argument("--results", default="results", help="results root (default: results)")
    pg.set_defaults(func=_cmd_pose_graph)

    se = sub.add_parser("slam-eval", help="map a world run with revisits from drifting odometry, close its loops "
                        "(teacher + LiDAR verification), optimise the pose graph and score ATE before/after (evo)")
    se.add_argument("--world", required=True, help="generated world with odometry_drift (config/world_slam.yaml)")
    se.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    se.add_argument("--student", required=True, help="camera student checkpoint folder")
    se.add_argument("--run", type=int, default=0, help="index of the run to evaluate (default 0)")
    se.add_argument("--config", default=None, help="node YAML of the mapping node (keyframes, matcher, verification)")
    se.add_argument("--robust", choices=["gnc", "cauchy", "huber", "none"], default="gnc",
                    help="robust kernel on the loops (default gnc)")
    se.add_argument("--align", choices=["se3", "sim3", "none"], default="se3",
                    help="alignment before ATE (default se3)")
    se.add_argument("--plant-wrong", type=int, default=0,
                    help="add this many wrong loops (keyframes >= 30 m apart) to check the robust kernel (default 0)")
    se.add_argument("--out", default=None, help="output folder (default: results/slam_eval/<timestamp>)")
    se.add_argument("--results", default="results", help="results root (default: results)")
    se.set_defaults(func=_cmd_slam_eval)

    d = sub.add_parser("demo", help="run the main job on the embedded synthetic world: world, teacher, student, "
                       "map and localization through the ROS 2 nodes, evaluation, Corridor, report",
                       description="Chain the whole pipeline on the synthetic world and write "
                       "<results>/demo/<timestamp>/report.md. Stages whose inputs did not change since the last "
                       "run are reused from <results>/demo/work_<quick|default>/.")
    d.add_argument("--quick", action="store_true", help="tiny world and short training: a few minutes")
    d.add_argument("--results", default="results", help="results root (default: results)")
    d.add_argument("--data", default="data", help="where generated worlds are cached (default: data)")
    d.add_argument("--config", default=None,
                   help="demo settings YAML with quick: and default: sections (default: config/demo.yaml)")
    d.add_argument("--fresh", action="store_true", help="re-run every stage instead of reusing earlier outputs")
    d.set_defaults(func=_cmd_demo)
    for command in sub.choices.values():
        what = CONFIGS.get(command.prog.split()[-1], (None, "its arguments"))[1]
        command.add_argument("--dump-config", action="store_true",
                             help=f"print the effective configuration ({what}) as YAML and exit")
    return p


#: command -> (function giving its effective configuration from the parsed arguments, what that is).
CONFIGS = {
    "generate": (_world_config, "WorldConfig: preset + --config + --seed; a starting point for --config"),
    "train-teacher": (_train_config, "TrainConfig: defaults + --config + flags + key=value"),
    "distill": (_train_config, "TrainConfig: defaults + --config + flags + key=value"),
    "build-map": (_build_map_config, "NodeConfig of the mapping node: defaults + --config + arguments"),
    "replay": (_replay_config, "NodeConfig of the localization node: defaults + --config + arguments"),
    "demo": (_demo_settings, "DemoSettings: the --quick or default section of --config"),
    "pose-graph": (_pose_graph_config, "PoseGraphConfig: defaults + --robust, --stamp-tolerance"),
    "slam-eval": (_slam_eval_config, "SlamEvalConfig: defaults + --robust, --align"),
}
#: Arguments naming a file to write (everything else called --out, --results or --data is a folder).
FILE_OUTPUTS = {("export", "out")}


def effective_config(args: argparse.Namespace) -> Any:
    """What ``--dump-config`` prints: the command's config schema filled in, or else its arguments."""
    if args.command in CONFIGS:
        return CONFIGS[args.command][0](args)
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
            if k not in ("func", "command", "dump_config")}


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output folder that is an existing file, and an output file that is an existing folder."""
    for name in ("out", "results", "data"):
        value = getattr(args, name, None)
        if value is None:
            continue
        path, flag = Path(value), "--" + name
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"{flag} {path}: {blocked} is an existing file, not a folder")
        if (args.command, name) in FILE_OUTPUTS:
            if path.is_dir():
                raise ConfigError(f"{flag} {path} is an existing folder; give the file to write")
        elif path.exists() and not path.is_dir():
            raise ConfigError(f"{flag} {path} is an existing file; give a folder")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (files, values, arguments) rather than a bug: one line, exit code 2.
    Error types of heavy modules count only once their module is loaded (they cannot be raised before)."""
    types: list[type[BaseException]] = [ValueError, DataError, yaml.YAMLError, FileNotFoundError, FileExistsError,
                                        IsADirectoryError, NotADirectoryError, PermissionError]
    for module, name in (("distilvpr_ros.models.checkpoint", "CheckpointError"),
                         ("distilvpr_ros.pipeline.embedder", "ModelLoadError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def error_line(error: BaseException) -> str:
    """A user error as one line."""
    if isinstance(error, ValidationError):
        return validation_message(error)
    if isinstance(error, yaml.YAMLError):
        from .config import yaml_problem

        return f"invalid YAML: {yaml_problem(error)}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dump_config:
            print(config_yaml(effective_config(args)), end="")
            return 0
        check_outputs(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, _user_error_types()):
            raise
        # Bad input: one clear line naming the problem, no traceback.
        print(f"distilvpr {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
