"""The DistilVPR experiment on the default synthetic world (the paper's table, reproduced on CPU).

Protocol (all choices are arguments; the defaults are what docs/results/distilvpr/ was made with):

* world: the ``default`` preset (8 runs: day x2, dusk, fog, autumn, night, rain, winter);
* training and validation only use runs of the *seen* conditions (day, dusk, fog, autumn) in the
  train and val regions; night, rain and winter are never seen in training;
* test: the test region (geographically disjoint). ``test AR@1`` is the standard cross-run AR@1 over
  every ordered pair of test runs; ``unseen AR@1`` uses seen-condition runs as the database and
  averages AR@1 over the queries of the unseen-condition runs;
* per seed: one teacher (camera+LiDAR), then every student variant distilled from it; model
  selection on the validation region (best val AR@1), never on the test region;
* reported: mean ± std over seeds.

Practical scale (2 CPU cores): 160x120 images, EfficientNet-Lite0 with its first 5 of 6 stages
frozen and cached (``feature_cache``), batch 128, 8 teacher / 5 student epochs, learning rates x10
(``--lr-scale``). Run:

    .venv/bin/python benchmarks/distilvpr_experiment.py --out docs/results/distilvpr

Issue 12 options: ``--teacher DIR`` distils a given teacher checkpoint for every seed (no teacher
training), ``--variant-set reduced`` runs the reduced table (teacher, no KD, RKD, SC, SC on
same-direction pairs, LiDAR no KD / SC), and the student recipe has its own knobs
(``--student-batch-size``, ``--student-lr``, ``--student-milestones``, ``--augmented-copies``,
``--night-p``, ``--rain-p``, ``--grad-norm-every``, ``--threads``). Every row also reports AR@1 on
same-direction queries (all test pairs, and per unseen condition).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.models.inference import embed_sequences
from distilvpr_ros.evaluation.evaluate import evaluate_sequences, same_direction
from distilvpr_ros.evaluation.plots import plot_bars
from distilvpr_ros.evaluation.report import mean_std_table, to_jsonable
from distilvpr_ros.models.checkpoint import load_model
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.training.trainer import train_student, train_teacher
from distilvpr_ros.utils.results import write_json

SEEN = ["day", "dusk", "fog", "autumn"]
UNSEEN = ["night", "rain", "winter"]
MANIFOLDS = {"E": "euclidean", "S": "spherical", "H": "hyperbolic"}

# name -> (student kind, distillation method, extra distill settings)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "camera: no KD": ("camera_student", "none", {}),
    **{f"camera: {m.upper()}": ("camera_student", m, {})
       for m in ("kd", "afd", "epc", "rkd", "csd", "lsd", "mkd", "pkt", "sp")},
    "camera: DistilVPR-S": ("camera_student", "s", {}),
    "camera: DistilVPR-C": ("camera_student", "c", {}),
    "camera: DistilVPR-SC": ("camera_student", "sc", {}),
    **{f"camera: SC manifolds {'+'.join(k)}": ("camera_student", "sc", {"manifolds": [MANIFOLDS[c] for c in k]})
       for k in (("E",), ("S",), ("H",), ("E", "S"), ("E", "H"), ("S", "H"))},
    "camera: DistilVPR-SC same-direction pairs": ("camera_student", "sc", {"relation_pairs": "same_direction"}),
    # SC's distillation gradient is ~10 % of the task gradient at the paper's lambda_S 10 (docs/results/distilvpr)
    **{f"camera: DistilVPR-SC lambda_S {w}": ("camera_student", "sc", {"self_weight": float(w)})
       for w in (25, 50, 100, 200)},  # a sweep, chosen on validation (best/checkpoint.json)
    "camera: DistilVPR-SC x4": ("camera_student", "sc", {"weight": 4.0}),
    # the ablations at the validation-chosen lambda_S 200 (docs/results/distilvpr/frozen_teacher)
    "camera: DistilVPR-S lambda_S 200": ("camera_student", "s", {"self_weight": 200.0}),
    **{f"camera: SC lambda_S 200 manifolds {'+'.join(k)}":
       ("camera_student", "sc", {"self_weight": 200.0, "manifolds": [MANIFOLDS[c] for c in k]})
       for k in (("E",), ("S",), ("H",))},
    "camera: DistilVPR-SC visible pairs": ("camera_student", "sc", {"relation_pairs": "visible"}),
    "lidar: no KD": ("lidar_student", "none", {}),
    "lidar: DistilVPR-SC": ("lidar_student", "sc", {}),
}
VARIANT_SETS = {
    "full": [k for k in VARIANTS if "pairs" not in k],
    "reduced": ["camera: no KD", "camera: RKD", "camera: DistilVPR-SC", "camera: DistilVPR-SC same-direction pairs",
                "lidar: no KD", "lidar: DistilVPR-SC"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class MemorySequence:
    """A sequence whose samples are read once and kept (the test split is embedded many times)."""

    def __init__(self, seq):
        self.run, self.poses, self.timestamps = seq.run, seq.poses, seq.timestamps
        self._samples = [seq[i] for i in range(len(seq))]
        self._meta = [seq.meta(i) for i in range(len(seq))]

    def __len__(self):
        return len(self._samples)

    def __getitem__(self, i):
        return self._samples[i]

    def meta(self, i):
        return self._meta[i]


def _same_direction_in(condition: str):
    def predicate(query_meta: dict, database_meta: dict) -> bool:
        return query_meta["condition"] == condition and same_direction(query_meta, database_meta)
    return predicate


def test_metrics(model, sequences, gt, head="fused") -> dict:
    descs = embed_sequences(model, sequences, batch_size=64, progress=False, head=head)
    overall = evaluate_sequences(descs, sequences, gt, query_subsets=["same_direction"])
    unseen = evaluate_sequences(descs, sequences, gt, database_filter=lambda s: s.meta(0)["condition"] in SEEN,
                                query_subsets={"same_direction": same_direction,
                                               **{c: _same_direction_in(c) for c in UNSEEN}})
    per_cond, subsets = unseen["per_condition"], unseen["subsets"]
    present = [c for c in UNSEEN if c in per_cond]
    return {
        "test/recall@1": overall["recall@1"],
        "test/recall@5": overall["recall@5"],
        "test/recall@1%": overall["recall@1%"],
        "test/same_direction/recall@1": overall["subsets"]["same_direction"]["recall@1"],
        "unseen/recall@1": float(np.mean([per_cond[c]["recall@1"] for c in present])),
        **{f"unseen/{c}/recall@1": per_cond[c]["recall@1"] for c in present},
        "unseen/same_direction/recall@1": float(np.mean([subsets[c]["recall@1"] for c in present])),
        **{f"unseen/same_direction/{c}/recall@1": subsets[c]["recall@1"] for c in present},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--out", type=Path, default=Path("docs/results/distilvpr"))
    p.add_argument("--work", type=Path, default=Path("results/experiment_distilvpr"), help="checkpoints, caches")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, nargs=2, default=[160, 120])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr-scale", type=float, default=10.0,
                   help="multiplies the paper's image/student learning rates (tens of steps here instead of ~10k); "
                   "the teacher's LiDAR lr stays at the paper's 1e-3")
    p.add_argument("--variants", nargs="*", default=None, help="variant names (default: --variant-set)")
    p.add_argument("--variant-set", choices=sorted(VARIANT_SETS), default="full")
    p.add_argument("--teacher", type=Path, default=None,
                   help="distil this teacher checkpoint (e.g. <run>/best) for every seed instead of training one")
    p.add_argument("--student-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument("--student-lr", type=float, default=None, help="default: 1e-4 x --lr-scale")
    p.add_argument("--student-milestones", type=int, nargs="*", default=None,
                   help="MultiStepLR epochs of the student (default: 2/3 of --student-epochs)")
    p.add_argument("--augmented-copies", type=int, default=0, help="feature_cache.augmented_copies of the student")
    p.add_argument("--night-p", type=float, default=0.0, help="augment.night_p of the student")
    p.add_argument("--rain-p", type=float, default=0.0, help="augment.rain_p of the student")
    p.add_argument("--grad-norm-every", type=int, default=0, help="distill.grad_norm_every")
    p.add_argument("--threads", type=int, default=2, help="torch threads of training")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only merge the results.json of these earlier --out folders into --out (no training)")
    args = p.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    names = args.variants if args.variants is not None else VARIANT_SETS[args.variant_set]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    variants = {k: VARIANTS[k] for k in names}
    args.out.mkdir(parents=True, exist_ok=True)
    test = [MemorySequence(s) for s in load_synthetic(args.world, regions={"test"})]
    base = {
        "data": {"root": str(args.world), "train_conditions": SEEN, "val_conditions": SEEN},
        "model": {"image_size": list(args.image_size), "freeze_stages": 5},
        "optim": {"batch_size": args.batch_size, "image_lr": 1e-4 * args.lr_scale,
                  "cloud_lr": 1e-3 * min(args.lr_scale, 1.0), "student_lr": 1e-4 * args.lr_scale},
        "feature_cache": {"dir": str(args.work / "cache")},
        "progress": False,
        "threads": args.threads,
    }
    student_optim = {**base["optim"], "epochs": args.student_epochs,
                     "milestones": args.student_milestones if args.student_milestones is not None
                     else [max(1, round(args.student_epochs * 2 / 3))]}
    if args.student_batch_size is not None:
        student_optim["batch_size"] = args.student_batch_size
    if args.student_lr is not None:
        student_optim["student_lr"] = args.student_lr
    student_extra = {"feature_cache": {**base["feature_cache"], "augmented_copies": args.augmented_copies},
                     "augment": {"night_p": args.night_p, "rain_p": args.rain_p}}
    gt = TrainConfig.from_yaml(None, base).ground_truth
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    budgets: dict[str, list[dict]] = {}
    given_teacher_rows = None
    for seed in args.seeds:
        if args.teacher is not None:
            teacher_best = args.teacher
            if given_teacher_rows is None:  # one given teacher: the same numbers for every seed
                teacher = load_model(teacher_best)
                given_teacher_rows = (test_metrics(teacher, test, gt), test_metrics(teacher, test, gt, head="image"))
            row, image_row = given_teacher_rows
        else:
            teacher_cfg = TrainConfig.from_yaml(None, {
                **base, "seed": seed, "out_dir": str(args.work / f"seed{seed}" / "teacher"),
                "optim": {**base["optim"], "epochs": args.teacher_epochs,
                          "milestones": [max(1, round(args.teacher_epochs * 2 / 3))]}})
            t0 = time.perf_counter()
            teacher_best = train_teacher(teacher_cfg) / "best"
            teacher = load_model(teacher_best)
            row = test_metrics(teacher, test, gt) | {"train_seconds": time.perf_counter() - t0}
            image_row = test_metrics(teacher, test, gt, head="image")
        results.setdefault("teacher (camera+LiDAR)", []).append(row)
        results.setdefault("teacher image branch only", []).append(image_row)
        print(f"seed {seed} teacher: {row}", flush=True)
        for name, (student, method, extra) in variants.items():
            t0 = time.perf_counter()
            cfg = TrainConfig.from_yaml(None, {
                **base, **student_extra, "seed": seed, "out_dir": str(args.work / f"seed{seed}" / slug(name)),
                "optim": student_optim,
                "distill": {"teacher": str(teacher_best), "student": student, "method": method,
                            "grad_norm_every": args.grad_norm_every if method in ("s", "c", "sc", "rkd") else 0,
                            **extra}})
            run_dir = train_student(cfg)
            row = test_metrics(load_model(run_dir / "best"), test, gt) | {"train_seconds": time.perf_counter() - t0}
            results.setdefault(name, []).append(row)
            history = json.loads((run_dir / "history.json").read_text())
            budgets.setdefault(name, []).append({
                "steps": int(sum(r["steps"] for r in history)), "epochs": len(history),
                "best_epoch": int(max(history, key=lambda r: r["val/recall@1"])["epoch"]),
                "step_seconds": float(sum(r["seconds_per_step"] * r["steps"] for r in history))})
            print(f"seed {seed} {name}: test AR@1 {row['test/recall@1']:.3f}, same-dir "
                  f"{row['test/same_direction/recall@1']:.3f}, unseen same-dir "
                  f"{row['unseen/same_direction/recall@1']:.3f} ({row['train_seconds']:.0f} s, "
                  f"{budgets[name][-1]['steps']} steps)", flush=True)
            write_json(args.out / "results.json",
                       to_jsonable({"seeds": args.seeds, "results": results, "budgets": budgets}))

    minutes = (time.perf_counter() - started) / 60
    command = (f".venv/bin/python benchmarks/distilvpr_experiment.py --world {args.world} --out {args.out} "
               f"--seeds {' '.join(map(str, args.seeds))} --teacher-epochs {args.teacher_epochs} "
               f"--student-epochs {args.student_epochs} --image-size {' '.join(map(str, args.image_size))} "
               f"--batch-size {args.batch_size} --lr-scale {args.lr_scale} --variants "
               + " ".join(f"'{n}'" for n in names)
               + (f" --teacher {args.teacher}" if args.teacher is not None else "")
               + (f" --student-batch-size {args.student_batch_size}" if args.student_batch_size else "")
               + (f" --student-lr {args.student_lr}" if args.student_lr else "")
               + (f" --student-milestones {' '.join(map(str, args.student_milestones))}"
                  if args.student_milestones is not None else "")
               + f" --augmented-copies {args.augmented_copies} --night-p {args.night_p} --rain-p {args.rain_p}"
               + f" --grad-norm-every {args.grad_norm_every} --threads {args.threads}")
    write_report(args.out, results, budgets, [command], minutes, args.seeds)


KEYS = ["test/recall@1", "test/same_direction/recall@1", "unseen/recall@1", "unseen/same_direction/recall@1",
        *[f"unseen/same_direction/{c}/recall@1" for c in UNSEEN],
        *[f"unseen/{c}/recall@1" for c in UNSEEN], "test/recall@5", "steps", "epochs", "train_seconds"]


def write_report(out: Path, results: dict, budgets: dict, commands: list[str], minutes: float, seeds) -> None:
    """README.md (the table), results.json and the bar plot of one experiment (or of merged parts)."""
    rows = {name: [dict(row, **{k: b[k] for k in ("steps", "epochs") if k in b})
                   for row, b in zip(runs, budgets.get(name, [{}] * len(runs)) or [{}] * len(runs))]
            for name, runs in results.items()}
    table = mean_std_table(rows, KEYS)
    text = [
        "# DistilVPR on the default synthetic world",
        "",
        *[f"Command: `{command}`" for command in commands],
        "",
        (f"{minutes:.1f} minutes of wall time" if minutes else "Wall time per student: `train_seconds`")
        + f" on this machine (2 CPU cores, shared), seeds {list(seeds)}.",
        "",
        f"Train/val on conditions {', '.join(SEEN)}; test region, unseen conditions {', '.join(UNSEEN)} "
        "(never seen in training or selection). AR@N: mean over ordered pairs of test runs; *unseen*: "
        "seen-condition runs as database, queries from the unseen-condition runs; *same_direction*: queries "
        "whose nearest true match was driven the same way. Mean ± std over seeds; selection on the validation "
        "region. `steps` / `epochs`: the student's training budget.",
        "",
        table,
        "",
        "![unseen AR@1](distilvpr_ar1.png)",
        "",
    ]
    (out / "README.md").write_text("\n".join(text))
    write_json(out / "results.json", to_jsonable({"seeds": list(seeds), "minutes": minutes, "commands": commands,
                                                  "results": results, "budgets": budgets}))
    means = {name: float(np.mean([r["unseen/same_direction/recall@1"] if "unseen/same_direction/recall@1" in r
                                  else r["unseen/recall@1"] for r in runs])) for name, runs in results.items()}
    plot_bars(means, out / "distilvpr_ar1.png", highlight="camera: DistilVPR-SC",
              title="AR@1, same-direction queries from unseen conditions (mean over seeds)", xlabel="AR@1")
    print("\n".join(text))
    print(json.dumps({"minutes": round(minutes, 1)}))


def merge(parts: list[Path], out: Path) -> None:
    """One report from the results.json of several runs of this script (e.g. variants split over two
    processes, or seeds run apart): rows of the same variant are concatenated in the order given; the
    given teacher's rows are kept once per seed."""
    results: dict[str, list] = {}
    budgets: dict[str, list] = {}
    commands, seeds, minutes = [], [], 0.0
    teacher_rows = ("teacher (camera+LiDAR)", "teacher image branch only")
    for part in parts:
        data = json.loads((part / "results.json").read_text())
        commands += data.get("commands", [data["command"]] if "command" in data else [])
        minutes = max(minutes, data.get("minutes", 0.0))
        new_seeds = [s for s in data["seeds"] if s not in seeds]
        seeds += new_seeds
        for name, runs in data["results"].items():
            if name in teacher_rows and not new_seeds:
                continue
            results.setdefault(name, []).extend(runs)
            budgets.setdefault(name, []).extend(data.get("budgets", {}).get(name, [{}] * len(runs)))
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, results, budgets, commands, minutes, seeds)


if __name__ == "__main__":
    main()
