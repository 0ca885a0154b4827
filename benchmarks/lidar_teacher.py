"""The teacher's LiDAR side, measured: classical descriptors vs. the learned polar encoder vs. the BEV CNN.

Protocol: the package's own cross-run evaluation (``evaluation.evaluate.evaluate_sequences``) on the
default world's **test** region: every ordered pair of the 8 runs, a retrieval is correct within 25 m,
AR@1 = mean over pairs; subsets ``same_direction`` / ``opposite_direction`` (query vs. its nearest true
match) and the per-condition breakdown (``fog``). Chance = random descriptors (1024-d Gaussian, mean of
5 draws), i.e. a random ranking.

Rows (each on single scans and on 20 m centred submaps = the scans within ±10 m of travel, accumulated with
the run's poses by ``data.submap.accumulate_submap``, no voxel filter).

* ``scan_context``: 20 x 60 max-height grid to 100 m, ring-key top-10 re-ranked by the column-shift
  distance (``models.classical.scan_context_distances``; its two-stage ranking is scored by a pair loop
  here that reproduces ``evaluate_sequences``, checked equal on the FFT rows);
* ``ring_key`` and ``scan_context_fft``: the parameter-free model kinds (cosine);
Submaps are capped at 60k points (every k-th point beyond), which bounds training memory and time.

* ``polar``: the learned yaw-invariant encoder (``model.lidar_encoder: polar``), trained as a LiDAR
  student with the triplet task loss only (``distill.method: none``, 128-d like the teacher's LiDAR
  branch), lr 1e-3, any yaw, lateral shift ±7 m, range cut (p 0.3, 35-90 m), no flips; once on single
  scans (``polar``) and once on 20 m submaps (``polar_submap``);
* ``bev``: the old Cartesian BEV CNN trained the same way but with the default (Oxford) point
  augmentation it always had, as the teacher's LiDAR head was.

Training (``--epochs``, one seed each unless ``--seeds``) writes run folders under ``--runs``
(default ``data/lidar_teacher_runs``, git-ignored) and is reused when ``best/`` exists there. Timing:
one thread, batch 1, the minimum and median over repetitions (the machine is shared): polar grid +
forward per scan, BEV grid + forward per scan, and submap assembly (clouds already in memory).

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/lidar_teacher.py --world data/world_default \\
        --out docs/results/lidar_teacher
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from distilvpr_ros.data.ground_truth import cross_run_pairs
from distilvpr_ros.data.submap import (SubmapConfig, SubmapSequence, TrailingSubmaps, accumulate_submap,
                                       submap_members)
from distilvpr_ros.data.synthetic import load_synthetic, read_world_meta
from distilvpr_ros.evaluation.evaluate import QUERY_SUBSETS, evaluate_sequences, frame_metas
from distilvpr_ros.evaluation.metrics import average_recalls, recall_at_n
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable
from distilvpr_ros.models import build_model
from distilvpr_ros.models.checkpoint import load_model
from distilvpr_ros.models.classical import scan_context_distances
from distilvpr_ros.models.config import scan_context_grid
from distilvpr_ros.models.inference import embed_batch
from distilvpr_ros.models.preprocess import cloud_to_bev
from distilvpr_ros.utils.results import write_json

SUBSETS = ("same_direction", "opposite_direction")
#: The submaps of every row: "20 m submaps", centred (±10 m of travel), at most 60k points (every k-th point beyond;
#: bounds training memory and time).
SUBMAP = SubmapConfig(length_m=20.0, window="centred", max_points=60000)
TARGETS = {"single": 0.80, "submap": 0.88, "same_direction": 0.92, "opposite_direction": 0.70, "fog": 0.60}
POLAR_AUGMENT = {"augment.image": False, "augment.rotate_deg": 180.0, "augment.flip_p": [0.0, 0.0],
                 "augment.lateral_shift_m": 7.0, "augment.range_cut_p": 0.3, "augment.range_cut_m": [35.0, 90.0]}


def summary(metrics: dict) -> dict:
    """AR@1 overall, by direction subset and by condition (and query counts)."""
    return {
        "recall@1": metrics["recall@1"],
        "recall@5": metrics.get("recall@5"),
        "num_queries": metrics["num_queries"],
        "num_pairs": metrics["num_pairs"],
        **{name: metrics["subsets"][name]["recall@1"] for name in SUBSETS if name in metrics["subsets"]},
        "per_condition": {c: r["recall@1"] for c, r in metrics["per_condition"].items()},
    }


def evaluate_by_distance(distance_fn, sequences) -> dict:
    """``evaluate_sequences`` for a ranking given as distances: ``distance_fn(query_run, database_run)``."""
    metas = [frame_metas(seq) for seq in sequences]
    positions = [np.asarray(seq.poses)[:, :2, 3] for seq in sequences]
    overall, subsets, conditions = [], {name: [] for name in SUBSETS}, {}
    for pair in cross_run_pairs(list(sequences)):
        similarity = -distance_fn(pair.query, pair.database)
        similarity = np.where(np.isfinite(similarity), similarity, -1e30)
        evaluable = list(pair.evaluable)

        def recalls(keep):
            return recall_at_n(similarity[keep], [pair.true_matches[i] for i in keep])
        overall.append(recalls(evaluable))
        nearest = {i: pair.true_matches[i][np.argmin(np.linalg.norm(
            positions[pair.database][pair.true_matches[i]] - positions[pair.query][i], axis=1))] for i in evaluable}
        q_meta, db_meta = metas[pair.query], metas[pair.database]
        for name in SUBSETS:
            subsets[name].append(recalls([i for i in evaluable if QUERY_SUBSETS[name](q_meta[i], db_meta[nearest[i]])]))
        for condition in sorted({q_meta[i]["condition"] for i in evaluable}):
            conditions.setdefault(condition, []).append(
                recalls([i for i in evaluable if q_meta[i]["condition"] == condition]))

    def block(per_pair):
        averaged = average_recalls(per_pair)
        return {**averaged, "num_queries": int(sum(p["num_queries"] for p in per_pair)),
                "num_pairs": int(averaged["num_pairs"])}
    out = block(overall)
    out["subsets"] = {name: block(results) for name, results in subsets.items()}
    out["per_condition"] = {c: block(results) for c, results in conditions.items()}
    return out


def seed_mean_row(name: str, label: str, per_seed: list[dict], seeds: list[int]) -> dict:
    """One table row of a learned model trained at several seeds: the mean of every figure, its (population)
    standard deviation as ``<key>_std`` when there is more than one seed, and each seed's own figures."""
    row = {"name": name, "input": label, "seeds": len(per_seed), "num_queries": per_seed[0]["num_queries"],
           "num_pairs": per_seed[0]["num_pairs"], "per_seed": dict(zip(map(str, seeds), per_seed))}
    for key in ("recall@1", "recall@5", *SUBSETS):
        values = [r[key] for r in per_seed]
        row[key] = float(np.mean(values))
        if len(values) > 1:
            row[f"{key}_std"] = float(np.std(values))
    row["per_condition"] = {c: float(np.mean([r["per_condition"][c] for r in per_seed]))
                            for c in per_seed[0]["per_condition"]}
    if len(per_seed) > 1:
        row["per_condition_std"] = {c: float(np.std([r["per_condition"][c] for r in per_seed]))
                                    for c in per_seed[0]["per_condition"]}
    return row


def grid_key(cfg) -> str:
    return f"{type(cfg).__name__}:{cfg.model_dump_json()}"


def grids_of(sequences, configs) -> dict[str, list[np.ndarray]]:
    """Every frame's cloud (scan or submap) rasterised once per grid config: ``key -> per-run arrays``."""
    out: dict[str, list[np.ndarray]] = {grid_key(cfg): [] for cfg in configs}
    unique = {grid_key(cfg): cfg for cfg in configs}
    for seq in sequences:
        per_frame = {key: [] for key in unique}
        for i in range(len(seq)):
            cloud = seq[i].cloud
            for key, cfg in unique.items():
                per_frame[key].append(cloud_to_bev(cloud, cfg))
        for key in unique:
            out[key].append(np.stack(per_frame[key]))
    return out


def embed_grids(model, grids: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """L2-normalised descriptors of precomputed grids (``embed_batch``, the package's one model runner)."""
    model.eval()
    return [np.concatenate([embed_batch(model, {"cloud": g[i:i + batch]}) for i in range(0, len(g), batch)])
            for g in grids]


def chance(sequences, draws: int = 5) -> dict:
    rng = np.random.default_rng(0)
    results = []
    for _ in range(draws):
        descs = [rng.standard_normal((len(seq), 1024)).astype(np.float32) for seq in sequences]
        descs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in descs]
        results.append(summary(evaluate_sequences(descs, sequences, query_subsets=SUBSETS)))
    mean = {k: float(np.mean([r[k] for r in results])) for k in ("recall@1", *SUBSETS)}
    expected = []  # analytic: P(top-1 correct) = |true matches| / |database| for a random ranking
    for pair in cross_run_pairs(list(sequences)):
        n_db = len(sequences[pair.database])
        expected.append(np.mean([len(pair.true_matches[i]) / n_db for i in pair.evaluable]))
    mean["analytic_recall@1"] = float(np.mean(expected))
    return mean


def train(name: str, world: Path, runs: Path, encoder: str, epochs: int, seed: int, submap: bool) -> Path:
    """Train (or reuse) one LiDAR student run; returns its ``best`` checkpoint folder."""
    from distilvpr_ros.training.config import TrainConfig
    from distilvpr_ros.training.trainer import train_student

    out = runs / f"{name}_e{epochs}_seed{seed}"
    if (out / "best" / "checkpoint.json").is_file():
        return out / "best"
    overrides = {"data.root": str(world), "model.lidar_encoder": encoder, "model.student_dim": 128,
                 "model.pretrained": False, "model.image_backbone": "resnet18",
                 "distill.student": "lidar_student", "distill.method": "none", "optim.epochs": epochs,
                 "optim.student_lr": 1e-3, "optim.milestones": [max(1, int(0.7 * epochs))],
                 "feature_cache.enabled": False, "seed": seed, "threads": 1, "out_dir": str(out),
                 "progress": False, "augment.image": False}
    if encoder == "polar":
        overrides.update(POLAR_AUGMENT)
    if submap:  # the training data config reads submaps (data.submap; LiDAR extrinsic from world.json)
        overrides.update({f"data.submap.{k}": v for k, v in SUBMAP.model_dump().items()})
    cfg = TrainConfig.from_yaml(None, overrides)
    started = time.perf_counter()
    train_student(cfg)
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return out / "best"


def timed(fn, repeats: int = 50) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"min_ms": 1000 * min(times), "median_ms": 1000 * float(np.median(times))}


def timing(model_paths: dict[str, Path], sequence, base_T_lidar) -> dict:
    torch.set_num_threads(1)
    clouds = [sequence.cloud(i) for i in range(min(len(sequence), 40))]
    cloud = clouds[20]
    out = {"points_per_scan": int(np.mean([len(c) for c in clouds]))}
    for name, path in model_paths.items():
        model = load_model(path).eval()
        grid = model.input_spec.bev

        def run(model=model, grid=grid):
            with torch.inference_mode():
                model(cloud=torch.from_numpy(cloud_to_bev(cloud, grid))[None])
        run()
        out[f"{name}_ms_per_scan"] = timed(run)
        out[f"{name}_grid_ms"] = timed(lambda grid=grid: cloud_to_bev(cloud, grid))
    for kind in ("scan_context_fft",):
        model = build_model(kind)
        out[f"{kind}_ms_per_scan"] = timed(lambda model=model: model(
            cloud=torch.from_numpy(cloud_to_bev(cloud, model.input_spec.bev))[None]))
    sub = SUBMAP
    poses = sequence.poses[: len(clouds)]
    out["submap_assembly"] = timed(lambda: accumulate_submap(clouds, poses, 20, sub, base_T_lidar))
    out["submap_scans_mean"] = float(np.mean([len(submap_members(poses, i, sub.length_m, sub.max_scans, sub.window))
                                              for i in range(5, 35)]))
    out["submap_points_mean"] = float(np.mean([len(accumulate_submap(clouds, poses, i, sub, base_T_lidar))
                                               for i in range(5, 35)]))
    return out


def submap_timing(sequence, base_T_lidar, lengths=(20.0, 50.0), repeats: int = 50) -> dict:
    """Submap assembly per keyframe, one thread, clouds in memory: offline (``accumulate_submap``, trailing and
    centred) and in the mapping-node path (``TrailingSubmaps.submap`` over the earlier keyframes, what
    ``MapBuilder.add_keyframe`` adds per keyframe), with the package's default bounds (11 scans, 100 m)."""
    torch.set_num_threads(1)
    n = min(len(sequence), 40)
    clouds = [sequence.cloud(i) for i in range(n)]
    poses, stamps = np.asarray(sequence.poses[:n]), np.asarray(sequence.timestamps[:n], dtype=float)
    last = n - 1
    out = {"points_per_scan": int(np.mean([len(c) for c in clouds])),
           "keyframe_spacing_m": float(np.median(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)))}
    for length in lengths:
        for window in ("trailing", "centred"):
            cfg = SubmapConfig(length_m=length, window=window)
            centre = last if window == "trailing" else n // 2
            key = f"{length:g}m_{window}"
            out[f"offline_{key}"] = timed(lambda: accumulate_submap(clouds, poses, centre, cfg, base_T_lidar), repeats)
            out[f"offline_{key}_scans"] = len(submap_members(poses, centre, length, cfg.max_scans, window))
            out[f"offline_{key}_points"] = len(accumulate_submap(clouds, poses, centre, cfg, base_T_lidar))
        live = TrailingSubmaps(SubmapConfig(length_m=length), base_T_lidar)
        for i in range(last):
            live.add(stamps[i], poses[i], clouds[i])
        out[f"node_{length:g}m_submap"] = timed(lambda: live.submap(stamps[last], poses[last], clouds[last]), repeats)
        out[f"node_{length:g}m_scans"] = live.counts["last_scans"]
    return out


def yaw_change(path: Path, sequence, scans: int = 10, yaws: int = 5) -> dict:
    """Relative descriptor change of a trained model under random yaws of real scans."""
    model = load_model(path).eval()
    rng = np.random.default_rng(0)
    changes = []
    for i in np.linspace(0, len(sequence) - 1, scans).astype(int):
        cloud = sequence.cloud(int(i))
        rotated = []
        for yaw in rng.uniform(-math.pi, math.pi, yaws):
            c, s = math.cos(yaw), math.sin(yaw)
            r = cloud.copy()
            r[:, 0], r[:, 1] = c * cloud[:, 0] - s * cloud[:, 1], s * cloud[:, 0] + c * cloud[:, 1]
            rotated.append(r)
        grids = torch.from_numpy(np.stack([cloud_to_bev(x, model.input_spec.bev) for x in [cloud, *rotated]]))
        with torch.inference_mode():
            d = model(cloud=grids)["fused"]
        changes += ((d[1:] - d[:1]).norm(dim=1) / d[0].norm()).tolist()
    return {"mean": float(np.mean(changes)), "max": float(np.max(changes)), "n": len(changes)}


def fmt(value, std=None) -> str:
    return "" if value is None else f"{value:.3f}" + ("" if std is None else f" ± {std:.3f}")


def write_markdown(results: dict, path: Path) -> None:
    rows = []
    for row in results["rows"]:
        rows.append({"descriptor": row["name"], "input": row["input"],
                     "AR@1": fmt(row["recall@1"], row.get("recall@1_std")),
                     "same dir.": fmt(row.get("same_direction"), row.get("same_direction_std")),
                     "opposite": fmt(row.get("opposite_direction"), row.get("opposite_direction_std")),
                     "fog": fmt(row["per_condition"].get("fog"), row.get("per_condition_std", {}).get("fog")),
                     "seeds": row.get("seeds", ""), "queries": row["num_queries"]})
    c = results["chance"]
    chance_line = "" if c is None else (
        f" Chance (random ranking): AR@1 {c['recall@1']:.3f} (same direction {c['same_direction']:.3f}, opposite "
        f"{c['opposite_direction']:.3f}; analytic {c['analytic_recall@1']:.3f}).")
    seed_rows = [{"model": row["name"], "input": row["input"], "seed": seed, "AR@1": fmt(r["recall@1"]),
                  "same dir.": fmt(r["same_direction"]), "opposite": fmt(r["opposite_direction"]),
                  "fog": fmt(r["per_condition"].get("fog"))}
                 for row in results["rows"] for seed, r in row.get("per_seed", {}).items()]
    lines = ["# LiDAR side of the teacher: classical vs. learned (default world, test region)", "",
             f"Cross-run AR@1 (correct within 25 m), {rows[0]['queries']} queries over "
             f"{results['rows'][0]['num_pairs']} ordered run pairs.{chance_line} Learned rows: mean ± std "
             "(population) over the seeds.", "",
             markdown_table(rows, ["descriptor", "input", "AR@1", "same dir.", "opposite", "fog", "seeds",
                                   "queries"]), "",
             "Targets (issue 11): learned single scan AR@1 >= 0.80 (same >= 0.92, opposite >= 0.70, fog >= 0.60); "
             "20 m submaps >= 0.88.", ""]
    if any(int(row.get("seeds", 1)) > 1 for row in results["rows"]):
        lines += ["## Per seed", "", markdown_table(seed_rows, ["model", "input", "seed", "AR@1", "same dir.",
                                                                "opposite", "fog"]), ""]
    lines += ["## Training", ""] + [f"- {line}" for line in results["training"]] + [""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {line}" for line in results["notes"]] + [""]
    t = results["timing"]
    load = results.get("load_average")
    lines += ["## Timing (one thread, batch 1; min / median ms; shared 2-core machine"
              + ("" if load is None else f", load average {' '.join(f'{x:.1f}' for x in load)}") + ")", ""]
    for key, value in t.items():
        if isinstance(value, dict):
            lines.append(f"- {key}: {value['min_ms']:.2f} / {value['median_ms']:.2f}")
        else:
            lines.append(f"- {key}: {value:.1f}" if isinstance(value, float) else f"- {key}: {value}")
    if results.get("yaw_change"):
        lines += ["", "## Random-yaw change of the trained descriptors (real test scans)", ""]
        lines += [f"- {name}: mean {v['mean']:.4f}, max {v['max']:.4f} over {v['n']} rotations"
                  for name, v in results["yaw_change"].items()]
    lines += ["", f"Command: `{results['command']}`", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("data/world_default"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/lidar_teacher"))
    parser.add_argument("--runs", type=Path, default=Path("data/lidar_teacher_runs"))
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the polar single-scan run")
    parser.add_argument("--bev-epochs", type=int, default=10, help="training epochs of the BEV run")
    parser.add_argument("--submap-epochs", type=int, default=6, help="training epochs of the submap run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--learned", nargs="*", default=["polar", "bev", "polar_submap"],
                        help="learned runs to train/evaluate (polar, bev, polar_submap)")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--classical", action=argparse.BooleanOptionalAction, default=True,
                        help="also the classical rows and chance (deterministic: no seed changes them)")
    parser.add_argument("--submap-timing-only", action="store_true",
                        help="only time submap assembly (offline, mapping-node path): <out>/submap_timing.json")
    parser.add_argument("--note", action="append", default=[], help="a line added to the report (repeatable)")
    args = parser.parse_args()

    meta = read_world_meta(args.world)
    base_T_lidar = np.asarray(meta["calibration"]["T_base_lidar"])
    if args.submap_timing_only:
        out = {**submap_timing(load_synthetic(args.world, regions={"test"})[0], base_T_lidar),
               "load_average": list(os.getloadavg()), "command": "PYTHONPATH=$PWD nice -n 10 .venv/bin/python "
               f"benchmarks/lidar_teacher.py --world {args.world} --out {args.out} --submap-timing-only"}
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "submap_timing.json", to_jsonable(out))
        print(json.dumps(to_jsonable(out), indent=1))
        return
    checkpoints: dict[str, list[Path]] = {}
    training_notes = []
    for name in args.learned:
        encoder = "bev" if name == "bev" else "polar"
        for seed in args.seeds:
            submap = name.endswith("submap")
            epochs = args.submap_epochs if submap else args.bev_epochs if name == "bev" else args.epochs
            path = train(name, args.world, args.runs, encoder, epochs, seed, submap=submap)
            checkpoints.setdefault(name, []).append(path)
            seconds = (path.parent / "train_seconds.txt")
            history = json.loads((path.parent / "history.json").read_text())
            best = max(history, key=lambda r: r["val/recall@1"])
            training_notes.append(f"{name} seed {seed}: {len(history)} epochs, "
                                  f"{seconds.read_text().strip() if seconds.is_file() else '?'} s, best val AR@1 "
                                  f"{best['val/recall@1']:.3f} at epoch {best['epoch']}")
    if args.train_only:
        print("\n".join(training_notes))
        return

    single = load_synthetic(args.world, regions={"test"})
    submaps = [SubmapSequence(s, SUBMAP, base_T_lidar) for s in single]
    inputs = {"single scan": single, "20 m submap": submaps}
    classical = {kind: build_model(kind) for kind in ("ring_key", "scan_context_fft")}
    learned = {name: [load_model(path) for path in paths] for name, paths in checkpoints.items()}
    configs = ([scan_context_grid()] if args.classical else []) + [
        m.input_spec.bev for models in learned.values() for m in models]
    rows = []
    for label, sequences in inputs.items():
        started = time.perf_counter()
        grids = grids_of(sequences, configs)
        print(label, f"grids in {time.perf_counter() - started:.0f} s", flush=True)
        if args.classical:
            sc_grids = [g[:, 0] for g in grids[grid_key(scan_context_grid())]]
            sc = evaluate_by_distance(lambda q, d: scan_context_distances(sc_grids[q], sc_grids[d]), sequences)
            rows.append({"name": "scan_context (ring key top-10 + column shift)", "input": label, **summary(sc)})
        for kind, model in (classical if args.classical else {}).items():
            descs = embed_grids(model, grids[grid_key(model.input_spec.bev)])
            metrics = evaluate_sequences(descs, sequences, query_subsets=SUBSETS)
            if kind == "scan_context_fft":  # the pair loop above reproduces evaluate_sequences
                check = evaluate_by_distance(lambda q, d: -(descs[q] @ descs[d].T), sequences)
                assert abs(check["recall@1"] - metrics["recall@1"]) < 1e-9, (check["recall@1"], metrics["recall@1"])
            rows.append({"name": kind, "input": label, **summary(metrics)})
        for name, models in learned.items():
            per_seed = []
            for model in models:
                descs = embed_grids(model, grids[grid_key(model.input_spec.bev)])
                per_seed.append(summary(evaluate_sequences(descs, sequences, query_subsets=SUBSETS)))
            rows.append(seed_mean_row(f"learned {name}", label, per_seed, args.seeds))
        print(label, "done", flush=True)
    results = {
        "rows": rows,
        "chance": chance(single) if args.classical else None,
        "training": training_notes,
        "timing": timing({name: paths[0] for name, paths in checkpoints.items()}, single[0], base_T_lidar),
        "load_average": list(os.getloadavg()),
        "checkpoints": {name: [str(p) for p in paths] for name, paths in checkpoints.items()},
        "yaw_change": {name: yaw_change(paths[0], single[0]) for name, paths in checkpoints.items()},
        "targets": TARGETS,
        "notes": args.note,
        "conditions": dict(Counter(m["condition"] for seq in single for m in frame_metas(seq))),
        "config": {"world": str(args.world), "submap": SUBMAP.model_dump(), "epochs": args.epochs,
                   "submap_epochs": args.submap_epochs, "bev_epochs": args.bev_epochs,
                   "seeds": args.seeds, "polar_augment": POLAR_AUGMENT},
        "command": "PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/lidar_teacher.py "
                   f"--world {args.world} --out {args.out} --epochs {args.epochs} --bev-epochs {args.bev_epochs} "
                   f"--submap-epochs {args.submap_epochs} --runs {args.runs} --learned {' '.join(args.learned)} "
                   f"--seeds {' '.join(map(str, args.seeds))}" + ("" if args.classical else " --no-classical"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", to_jsonable(results))
    write_markdown(results, args.out / "results.md")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
