"""Several towns: does training on more towns help on a town never used? (issue 12, item 3).

Protocol (all choices are arguments; the defaults are what docs/results/towns/ was made with):

* towns: ``town`` preset worlds of different seeds (``distilvpr generate --preset town --seed S --no-bags``;
  ``--generate`` makes the missing ones and records the time per town): 4 training towns, a validation
  town, a test town; each has 5 runs (day both ways, dusk, night, rain);
* K = 1, 2, 4: the camera student (EfficientNet-Lite0, first 5 of 6 stages frozen and cached) trained on
  whole towns (``data.train_roots`` = the first K training towns, ``train_region: all``), model selection on
  the validation town (whole town), testing on the test town (whole town), which no run trains or selects on;
* training and validation use the *seen* conditions only (day, dusk); night and rain are *unseen*;
* the same number of optimizer steps for every K (``--steps``, rounded to whole epochs), so that K changes
  the variety of the data, not the training budget;
* variants: ``none`` (task loss only) and ``sc`` (DistilVPR-SC from a camera+LiDAR teacher trained on the
  same K towns with the same step budget);
* reported on the test town: AR@1 over all ordered run pairs, same-direction AR@1 (queries whose nearest
  true match drives the same way) overall and per query condition, each with its chance level (the
  expected AR@1 of a random ranking: true matches / database frames, averaged like AR@1), and the
  zero-shot ImageNet Lite0 + GeM row (K = 0) for reference.

Writes ``results.json`` and the table ``results.md`` under ``--out``. Run (one training job at a time; results
are appended, so runs can be continued with other seeds or variants):

    nice -n 10 .venv/bin/python benchmarks/towns_experiment.py --towns /tmp/towns --out docs/results/towns
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from distilvpr_experiment import MemorySequence  # benchmarks/ is on sys.path when run as a script
from distilvpr_ros.data.ground_truth import TrainingGroundTruth
from distilvpr_ros.data.samplers import PairBatchSampler
from distilvpr_ros.data.sources import filter_sequences
from distilvpr_ros.data.synthetic import load_worlds
from distilvpr_ros.evaluation.corridor import ZeroShotLite0
from distilvpr_ros.evaluation.evaluate import evaluate_sequences, evaluation_pairs, frame_metas, same_direction
from distilvpr_ros.evaluation.report import mean_std_table, to_jsonable
from distilvpr_ros.models.checkpoint import load_model
from distilvpr_ros.models.inference import embed_sequences
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.training.trainer import train_student, train_teacher
from distilvpr_ros.utils.results import write_json

SEEN = ["day", "dusk"]
UNSEEN = ["night", "rain"]
CONDITIONS = SEEN + UNSEEN
VARIANT_NAMES = {"none": "camera: no KD", "sc": "camera: DistilVPR-SC"}


def town_dir(towns: Path, seed: int) -> Path:
    return towns / f"town_s{seed}"


def generate_towns(towns: Path, seeds: list[int]) -> dict[str, float]:
    """Generate the missing ``town`` worlds (no bags); seconds per generated town."""
    from distilvpr_ros.data.world.config import load_world_config
    from distilvpr_ros.data.world.generate import generate_world

    seconds = {}
    for seed in seeds:
        out = town_dir(towns, seed)
        if (out / "world.json").is_file():
            continue
        t0 = time.perf_counter()
        generate_world(out, load_world_config("town", None, seed), write_bags=False, progress=False)
        seconds[out.name] = time.perf_counter() - t0
        print(f"generated {out} in {seconds[out.name]:.0f} s", flush=True)
    return seconds


def steps_per_epoch(roots: list[Path], cfg: TrainConfig) -> tuple[int, int]:
    """(pair batches per epoch, training frames) of a data config's training frames on these towns."""
    seqs = filter_sequences(load_worlds(roots), cfg.data.train_runs, cfg.data.train_conditions)
    positions = np.concatenate([np.asarray(s.poses)[:, :2, 3] for s in seqs])
    gt = TrainingGroundTruth.from_positions(positions, cfg.ground_truth)
    return len(PairBatchSampler(gt, cfg.optim.batch_size)), len(positions)


def chance_at_1(sequences, gt_cfg, keep) -> float:
    """Expected AR@1 of a random ranking: per pair, the mean over kept queries of true matches / database
    frames; averaged over the pairs that keep a query (as AR@1 is)."""
    metas = [frame_metas(s) for s in sequences]
    positions = [np.asarray(s.poses)[:, :2, 3] for s in sequences]
    per_pair = []
    for pair in evaluation_pairs(sequences, gt_cfg):
        db = positions[pair.database]
        rates = []
        for i in pair.evaluable:
            nearest = pair.true_matches[i][np.argmin(np.linalg.norm(db[pair.true_matches[i]]
                                                                    - positions[pair.query][i], axis=1))]
            if keep(metas[pair.query][i], metas[pair.database][nearest]):
                rates.append(len(pair.true_matches[i]) / len(db))
        if rates:
            per_pair.append(float(np.mean(rates)))
    return float(np.mean(per_pair)) if per_pair else float("nan")


def _condition(name: str):
    return lambda q, d: same_direction(q, d) and q["condition"] == name


def test_metrics(model, sequences, gt_cfg) -> dict:
    descs = embed_sequences(model, sequences, batch_size=64, progress=False)
    subsets = {"same_direction": same_direction, **{f"same_direction/{c}": _condition(c) for c in CONDITIONS}}
    out = evaluate_sequences(descs, sequences, gt_cfg, query_subsets=subsets)
    row = {"test/recall@1": out["recall@1"], "test/recall@5": out["recall@5"]}
    for name, result in out["subsets"].items():
        row[f"{name}/recall@1"] = result["recall@1"]
        row[f"{name}/num_queries"] = result["num_queries"]
    row["unseen_same_direction/recall@1"] = float(np.mean([row[f"same_direction/{c}/recall@1"] for c in UNSEEN]))
    return row


def chance_row(sequences, gt_cfg) -> dict:
    row = {"test/recall@1": chance_at_1(sequences, gt_cfg, lambda q, d: True),
           "same_direction/recall@1": chance_at_1(sequences, gt_cfg, same_direction)}
    for c in CONDITIONS:
        row[f"same_direction/{c}/recall@1"] = chance_at_1(sequences, gt_cfg, _condition(c))
    row["unseen_same_direction/recall@1"] = float(np.mean([row[f"same_direction/{c}/recall@1"] for c in UNSEEN]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--towns", type=Path, default=Path("/tmp/towns"), help="folder of the town_s<seed> worlds")
    p.add_argument("--train-towns", type=int, nargs="+", default=[11, 12, 13, 14], help="seeds; K uses the first K")
    p.add_argument("--val-town", type=int, default=15)
    p.add_argument("--test-town", type=int, default=16)
    p.add_argument("--generate", action="store_true", help="generate the missing towns first (timed)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--variants", nargs="+", default=["none"], choices=sorted(VARIANT_NAMES))
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of every student and teacher")
    p.add_argument("--image-size", type=int, nargs=2, default=[160, 120])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr-scale", type=float, default=10.0, help="as in benchmarks/distilvpr_experiment.py")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/results/towns"))
    p.add_argument("--work", type=Path, default=Path("/tmp/towns_work/runs"), help="checkpoints, caches")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results: dict[str, dict] = saved.get("results", {})
    generation = saved.get("generation_seconds", {})
    if args.generate:
        generation.update(generate_towns(args.towns, [*args.train_towns, args.val_town, args.test_town]))

    base = {
        "data": {"train_region": "all", "val_region": "all", "val_root": str(town_dir(args.towns, args.val_town)),
                 "train_conditions": SEEN, "val_conditions": SEEN},
        "model": {"image_size": list(args.image_size), "freeze_stages": 5},
        "optim": {"batch_size": args.batch_size, "image_lr": 1e-4 * args.lr_scale,
                  "cloud_lr": 1e-3 * min(args.lr_scale, 1.0), "student_lr": 1e-4 * args.lr_scale},
        "feature_cache": {"dir": str(args.work / "cache")},
        "threads": args.threads,
        "progress": False,
    }
    gt = TrainConfig.from_yaml(None, base).ground_truth
    test = [MemorySequence(s) for s in load_worlds([town_dir(args.towns, args.test_town)])]
    results.setdefault("chance", {"0": [chance_row(test, gt)]})
    if "zero-shot ImageNet Lite0 + GeM" not in results:
        zero_shot = ZeroShotLite0(tuple(args.image_size))
        results["zero-shot ImageNet Lite0 + GeM"] = {"0": [test_metrics(zero_shot, test, gt)]}

    def save(minutes=None):
        write_json(results_path, to_jsonable({**saved, "generation_seconds": generation, "results": results,
                                              "protocol": protocol, **({"minutes": minutes} if minutes else {})}))

    protocol = {"train_towns": args.train_towns, "val_town": args.val_town, "test_town": args.test_town,
                "seen": SEEN, "unseen": UNSEEN, "steps": args.steps, "image_size": args.image_size,
                "batch_size": args.batch_size, "lr_scale": args.lr_scale, "threads": args.threads}
    started = time.perf_counter()
    save()
    for seed in args.seeds:
        for k in args.ks:
            roots = [town_dir(args.towns, s) for s in args.train_towns[:k]]
            data = {**base["data"], "train_roots": [str(r) for r in roots]}
            probe = TrainConfig.from_yaml(None, {**base, "data": data})
            per_epoch, frames = steps_per_epoch(roots, probe)
            epochs = max(1, round(args.steps / per_epoch))
            optim = {**base["optim"], "epochs": epochs, "milestones": [max(1, round(epochs * 2 / 3))]}
            common = {**base, "data": data, "optim": optim, "seed": seed}
            teacher_dir = None
            for variant in args.variants:
                name = VARIANT_NAMES[variant]
                if any(r["seed"] == seed for r in results.get(name, {}).get(str(k), [])):
                    continue
                t0 = time.perf_counter()
                extra = {}
                if variant != "none":
                    if teacher_dir is None:
                        teacher_dir = train_teacher(TrainConfig.from_yaml(None, {
                            **common, "out_dir": str(args.work / f"seed{seed}_k{k}" / "teacher")})) / "best"
                    extra = {"teacher": str(teacher_dir)}
                run = train_student(TrainConfig.from_yaml(None, {
                    **common, "out_dir": str(args.work / f"seed{seed}_k{k}" / variant),
                    "distill": {"student": "camera_student", "method": variant, **extra}}))
                seconds = time.perf_counter() - t0
                row = test_metrics(load_model(run / "best"), test, gt) | {
                    "seed": seed, "train_seconds": seconds, "epochs": epochs, "steps": epochs * per_epoch,
                    "train_frames": frames, "load_average_1m": os.getloadavg()[0]}
                results.setdefault(name, {}).setdefault(str(k), []).append(row)
                print(f"seed {seed} K={k} {name}: same-direction AR@1 {row['same_direction/recall@1']:.3f} "
                      f"(unseen {row['unseen_same_direction/recall@1']:.3f}), {epochs} epochs x {per_epoch} steps, "
                      f"{frames} frames, {seconds:.0f} s", flush=True)
                save()
    minutes = (time.perf_counter() - started) / 60
    save(minutes)
    write_report(args, results, generation)


def write_report(args, results: dict, generation: dict) -> None:
    keys = ["same_direction/recall@1", *[f"same_direction/{c}/recall@1" for c in CONDITIONS],
            "unseen_same_direction/recall@1", "test/recall@1", "train_seconds"]
    rows = {}
    for name, by_k in results.items():
        for k, runs in sorted(by_k.items(), key=lambda item: int(item[0])):
            label = name if name in ("chance", "zero-shot ImageNet Lite0 + GeM") else f"{name}, K={k}"
            rows[label] = runs
    headers = {f"same_direction/{c}/recall@1": f"{c}{' (unseen)' if c in UNSEEN else ''}" for c in CONDITIONS}
    table = mean_std_table(rows, keys)
    for key, header in headers.items():
        table = table.replace(key, header, 1)
    gen = ", ".join(f"{name} {s:.0f} s" for name, s in sorted(generation.items())) or "not recorded here"
    text = [
        "# Several towns: AR@1 on a town never used, against the number of training towns K",
        "",
        f"Towns: `town` preset, seeds {args.train_towns} (K uses the first K), validation town "
        f"{args.val_town}, test town {args.test_town} (whole towns; no training or selection on the test town). "
        f"Train/val on conditions {', '.join(SEEN)}; {', '.join(UNSEEN)} are unseen. Camera student "
        f"(Lite0, 5 of 6 stages frozen), {args.image_size[0]}x{args.image_size[1]}, batch {args.batch_size}, "
        f"about {args.steps} optimizer steps for every K. Chance: expected AR@1 of a random ranking.",
        "",
        "Columns: same-direction AR@1 overall and per query condition; `test/recall@1`: every ordered run pair.",
        "",
        table,
        "",
        f"Generation time per town: {gen}.",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
