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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.models.inference import embed_sequences
from distilvpr_ros.evaluation.evaluate import evaluate_sequences
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
    "lidar: no KD": ("lidar_student", "none", {}),
    "lidar: DistilVPR-SC": ("lidar_student", "sc", {}),
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


def test_metrics(model, sequences, gt, head="fused") -> dict:
    descs = embed_sequences(model, sequences, batch_size=64, progress=False, head=head)
    overall = evaluate_sequences(descs, sequences, gt)
    unseen = evaluate_sequences(descs, sequences, gt,
                                database_filter=lambda s: s.meta(0)["condition"] in SEEN)
    per_cond = unseen["per_condition"]
    return {
        "test/recall@1": overall["recall@1"],
        "test/recall@5": overall["recall@5"],
        "test/recall@1%": overall["recall@1%"],
        "unseen/recall@1": float(np.mean([per_cond[c]["recall@1"] for c in UNSEEN if c in per_cond])),
        **{f"unseen/{c}/recall@1": per_cond[c]["recall@1"] for c in UNSEEN if c in per_cond},
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
    p.add_argument("--variants", nargs="*", default=None, help="subset of variant names (default: all)")
    args = p.parse_args()

    variants = {k: v for k, v in VARIANTS.items() if args.variants is None or k in args.variants}
    args.out.mkdir(parents=True, exist_ok=True)
    test = [MemorySequence(s) for s in load_synthetic(args.world, regions={"test"})]
    base = {
        "data": {"root": str(args.world), "train_conditions": SEEN, "val_conditions": SEEN},
        "model": {"image_size": list(args.image_size), "freeze_stages": 5},
        "optim": {"batch_size": args.batch_size, "image_lr": 1e-4 * args.lr_scale,
                  "cloud_lr": 1e-3 * min(args.lr_scale, 1.0), "student_lr": 1e-4 * args.lr_scale},
        "feature_cache": {"dir": str(args.work / "cache")},
        "progress": False,
    }
    gt = TrainConfig.from_yaml(None, base).ground_truth
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        teacher_cfg = TrainConfig.from_yaml(None, {
            **base, "seed": seed, "out_dir": str(args.work / f"seed{seed}" / "teacher"),
            "optim": {**base["optim"], "epochs": args.teacher_epochs,
                      "milestones": [max(1, round(args.teacher_epochs * 2 / 3))]}})
        t0 = time.perf_counter()
        teacher_dir = train_teacher(teacher_cfg)
        teacher = load_model(teacher_dir / "best")
        row = test_metrics(teacher, test, gt) | {"train_seconds": time.perf_counter() - t0}
        results.setdefault("teacher (camera+LiDAR)", []).append(row)
        results.setdefault("teacher image branch only", []).append(test_metrics(teacher, test, gt, head="image"))
        print(f"seed {seed} teacher: {row}", flush=True)
        for name, (student, method, extra) in variants.items():
            t0 = time.perf_counter()
            cfg = TrainConfig.from_yaml(None, {
                **base, "seed": seed, "out_dir": str(args.work / f"seed{seed}" / slug(name)),
                "optim": {**base["optim"], "epochs": args.student_epochs,
                          "milestones": [max(1, round(args.student_epochs * 2 / 3))]},
                "distill": {"teacher": str(teacher_dir / "best"), "student": student, "method": method, **extra}})
            run_dir = train_student(cfg)
            row = test_metrics(load_model(run_dir / "best"), test, gt) | {"train_seconds": time.perf_counter() - t0}
            results.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: test AR@1 {row['test/recall@1']:.3f}, unseen AR@1 "
                  f"{row['unseen/recall@1']:.3f} ({row['train_seconds']:.0f} s)", flush=True)
            write_json(args.out / "results.json", to_jsonable({"seeds": args.seeds, "results": results}))

    keys = ["test/recall@1", "test/recall@5", "test/recall@1%", "unseen/recall@1",
            *[f"unseen/{c}/recall@1" for c in UNSEEN], "train_seconds"]
    table = mean_std_table(results, keys)
    minutes = (time.perf_counter() - started) / 60
    command = (f".venv/bin/python benchmarks/distilvpr_experiment.py --world {args.world} --out {args.out} "
               f"--seeds {' '.join(map(str, args.seeds))} --teacher-epochs {args.teacher_epochs} "
               f"--student-epochs {args.student_epochs} --image-size {' '.join(map(str, args.image_size))} "
               f"--batch-size {args.batch_size} --lr-scale {args.lr_scale}")
    text = [
        "# DistilVPR on the default synthetic world",
        "",
        f"Command: `{command}` — {minutes:.1f} minutes on this machine (2 CPU cores), seeds {args.seeds}.",
        "",
        f"Train/val on conditions {', '.join(SEEN)}; test region, unseen conditions {', '.join(UNSEEN)}. "
        "AR@N: mean over ordered pairs of test runs; *unseen*: seen-condition runs as database, queries "
        "from the unseen-condition runs. Mean ± std over seeds; selection on the validation region.",
        "",
        table,
        "",
        "![test AR@1](distilvpr_ar1.png)",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(text))
    write_json(args.out / "results.json", to_jsonable({"seeds": args.seeds, "minutes": minutes, "command": command,
                                                       "results": results}))
    means = {name: float(np.mean([r["unseen/recall@1"] for r in rows])) for name, rows in results.items()}
    plot_bars(means, args.out / "distilvpr_ar1.png", highlight="camera: DistilVPR-SC",
              title="AR@1 on queries from unseen conditions (mean over seeds)", xlabel="AR@1")
    print("\n".join(text))
    print(json.dumps({"minutes": round(minutes, 1)}))


if __name__ == "__main__":
    main()
