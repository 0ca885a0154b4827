"""The MutualVPR experiment on the default synthetic world: task losses under viewpoint change and occlusion.

Protocol (all choices are arguments; the defaults are what docs/results/mutualvpr/ was made with):

* world: the ``default`` preset; training on every run of the train region, model selection on the
  val region (best val AR@1), test on the geographically disjoint test region;
* camera-only students (EfficientNet-Lite0, first 5 of 6 stages frozen and cached, 160x120) trained
  with each task loss: the learning core's triplet; CosFace with K = 1 (one class per cell); CosPlace
  heading bins (α = 30°, L = 2); MutualVPR K = 3 and K = 6 as the official code does it; MutualVPR
  K = 3 with the three fixes (label alignment, every cell clustered on a group's first visit, new labels
  at once); and DistilVPR-SC distillation from a camera+LiDAR teacher (one per seed) with the triplet
  and with the MutualVPR K = 3 task loss (SC with the other task losses did not fit the time budget);
* reported on the test region (cross-run, every ordered pair of runs): R@1/R@5 for all queries and for
  three query subsets: **same-direction** and **opposite-direction** revisits (query heading vs its
  nearest true match) and **occluded** queries (moving traffic covers > 15 % of the image);
* mean ± std over seeds; per-epoch clustering diagnostics (churn, purity) of the MutualVPR runs.

Scale (2 CPU cores): the world has ~8 training images per 10 m cell, so the class groups use N = 2
(4 groups, each ~43 cells, one per epoch) instead of the official N = 5 / 8 groups, which would train
on 1/25 of the cells per epoch. Classification runs get 8 epochs (each group visited twice) of 25 steps
at batch 32 (6.4k images seen) with encoder lr 1e-4 (at 1e-3 the validation R@1 of MutualVPR K = 3 fell
every epoch in a calibration run); triplet runs keep the DistilVPR experiment's recipe: 5 epochs over
all pairs at batch 128 (7k images), lr 1e-3. The teachers are the DistilVPR experiment's (same recipe,
trained on the seen conditions), reused when present. Re-running the command trains only what is
missing and re-evaluates everything. Run:

    .venv/bin/python benchmarks/mutualvpr_experiment.py --out docs/results/mutualvpr
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distilvpr_experiment import MemorySequence, slug  # benchmarks/ is on sys.path when run as a script
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.models.inference import embed_sequences
from distilvpr_ros.evaluation.evaluate import evaluate_sequences, occluded, opposite_direction, same_direction
from distilvpr_ros.evaluation.report import mean_std_table, to_jsonable
from distilvpr_ros.models.checkpoint import load_model
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.training.trainer import train_student, train_teacher
from distilvpr_ros.utils.results import write_json

SUBSETS = ("same_direction", "opposite_direction", "occluded")
FIXES = {"align_labels": True, "cluster_all_first_visit": True, "immediate_labels": True}
COSFACE = {"loss": {"task": "cosface"}}

# name -> (training overrides, needs the teacher)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "triplet": ({}, False),
    "CosFace K=1 (cell classes)": ({**COSFACE, "classify": {"views": 1}}, False),
    "CosPlace heading bins": ({**COSFACE, "classify": {"labels": "heading", "heading_groups": 2}}, False),
    "MutualVPR K=3": ({**COSFACE, "classify": {"views": 3}}, False),
    "MutualVPR K=6": ({**COSFACE, "classify": {"views": 6}}, False),
    "MutualVPR K=3 + fixes": ({**COSFACE, "classify": {"views": 3, **FIXES}}, False),
    "DistilVPR-SC + triplet": ({"distill": {"method": "sc"}}, True),
    "DistilVPR-SC + MutualVPR K=3": ({**COSFACE, "classify": {"views": 3}, "distill": {"method": "sc"}}, True),
    # SC at the lambda_S the DistilVPR experiment chose on validation (docs/results/distilvpr/frozen_teacher)
    "DistilVPR-SC lambda_S 200 + triplet": ({"distill": {"method": "sc", "self_weight": 200.0}}, True),
    "DistilVPR-SC lambda_S 200 + MutualVPR K=3": (
        {**COSFACE, "classify": {"views": 3}, "distill": {"method": "sc", "self_weight": 200.0}}, True),
}


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_metrics(model, sequences, gt, occlusion: float) -> dict:
    descs = embed_sequences(model, sequences, batch_size=64, progress=False)
    subsets = {"same_direction": same_direction, "opposite_direction": opposite_direction,
               "occluded": occluded(occlusion)}
    result = evaluate_sequences(descs, sequences, gt, query_subsets=subsets)
    row = {"all/recall@1": result["recall@1"], "all/recall@5": result["recall@5"]}
    for name in SUBSETS:
        row[f"{name}/recall@1"] = result["subsets"][name]["recall@1"]
        row[f"{name}/recall@5"] = result["subsets"][name]["recall@5"]
        row[f"{name}/queries"] = result["subsets"][name]["num_queries"]
    return row


def clustering_summary(run_dir: Path) -> dict:
    """Mean per-epoch churn / purity of the re-clustered cells and the final group purity."""
    history = json.loads((run_dir / "history.json").read_text())
    epochs = [r for r in history if r.get("mutual/reclustered_cells")]
    if not epochs:
        return {}
    return {
        "clustering/churn": float(np.nanmean([r["mutual/churn"] for r in epochs])),
        "clustering/partition_churn": float(np.nanmean([r["mutual/partition_churn"] for r in epochs])),
        "clustering/purity": float(np.nanmean([r["mutual/purity"] for r in epochs])),
        "clustering/group_purity_last": float(history[-1]["mutual/group_purity"]),
    }


def plot_subsets(results: dict[str, list[dict]], path: Path) -> None:
    """Grouped horizontal bars: R@1 (mean ± std over seeds) of each method on each query subset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    subsets = ("all", *SUBSETS)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) * 1.6 + 1))
    height = 0.8 / len(subsets)
    for j, subset in enumerate(subsets):
        values = [[r[f"{subset}/recall@1"] for r in results[name]] for name in names]
        ax.barh(np.arange(len(names)) + j * height, [np.mean(v) for v in values], height,
                xerr=[np.std(v) for v in values], label=subset.replace("_", " "))
    ax.set_yticks(np.arange(len(names)) + 0.4 - height / 2, names)
    ax.invert_yaxis()
    ax.set(xlabel="R@1 (test region, mean ± std over seeds)", xlim=(0, 1))
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_or_reuse(train, cfg: dict) -> Path:
    """``train(cfg)``, unless its run folder already holds a finished run of the same config (re-running the
    command then only re-evaluates)."""
    run_dir = Path(cfg["out_dir"])
    config = TrainConfig.from_yaml(None, cfg)
    history = run_dir / "history.json"
    if history.is_file() and (run_dir / "best").is_dir():
        done = json.loads(history.read_text())
        saved = TrainConfig.from_yaml(run_dir / "config.yaml")
        if len(done) == config.optim.epochs and saved == config:
            return run_dir
    return train(config)


def run_seconds(run_dir: Path) -> float:
    """Training time of a run: the sum of its epochs' seconds (training + validation, no caching)."""
    return float(sum(r["seconds"] for r in json.loads((run_dir / "history.json").read_text())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--out", type=Path, default=Path("docs/results/mutualvpr"))
    p.add_argument("--work", type=Path, default=Path("results/experiment_mutualvpr"), help="checkpoints, caches")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--triplet-epochs", type=int, default=5)
    p.add_argument("--classify-epochs", type=int, default=8)
    p.add_argument("--classify-iterations", type=int, default=25, help="steps per classification epoch")
    p.add_argument("--classify-lr", type=float, default=1e-4,
                   help="encoder lr of the CosFace runs (official 1e-5 over 500k steps; 1e-3 degraded val R@1)")
    p.add_argument("--group-spacing", type=int, default=2)
    p.add_argument("--image-size", type=int, nargs=2, default=[160, 120])
    p.add_argument("--lr-scale", type=float, default=10.0)
    p.add_argument("--occlusion", type=float, default=0.05,
                   help="occluded queries: moving traffic covers more than this fraction of the image (the "
                   "default world has 97 of 555 test frames above 5 %%, 3 above 15 %%)")
    p.add_argument("--variants", nargs="*", default=None, help="subset of variant names (default: all)")
    p.add_argument("--teachers", type=Path, default=Path("results/experiment_distilvpr"),
                   help="take <this>/seed<N>/teacher/best (the DistilVPR experiment's teachers) when it exists; "
                   "else train one under --work")
    p.add_argument("--report-only", action="store_true",
                   help="write README and plot from <out>/results.json (e.g. of an interrupted run) without "
                   "training or evaluating")
    args = p.parse_args()

    variants = {k: v for k, v in VARIANTS.items() if args.variants is None or k in args.variants}
    args.out.mkdir(parents=True, exist_ok=True)
    test = [MemorySequence(s) for s in load_synthetic(args.world, regions={"test"})]
    base = {
        "data": {"root": str(args.world)},
        "model": {"image_size": list(args.image_size), "freeze_stages": 5},
        "optim": {"batch_size": 128, "image_lr": 1e-4 * args.lr_scale, "cloud_lr": 1e-3,
                  "student_lr": 1e-4 * args.lr_scale},
        "classify": {"group_spacing": args.group_spacing, "groups": args.group_spacing ** 2,
                     "iterations": args.classify_iterations},
        "feature_cache": {"dir": str(args.work / "cache")},
        "progress": False,
    }
    gt = TrainConfig.from_yaml(None, base).ground_truth
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        results = {name: rows for name, rows in saved["results"].items() if name in variants or "teacher" in name}

    for seed in [] if args.report_only else args.seeds:
        teacher_dir = args.teachers / f"seed{seed}" / "teacher"
        if any(needs for _, needs in variants.values()):
            if not (teacher_dir / "best").is_dir():
                teacher_dir = train_or_reuse(train_teacher, merge(base, {
                    "seed": seed, "out_dir": str(args.work / f"seed{seed}" / "teacher"),
                    "optim": {"epochs": args.teacher_epochs,
                              "milestones": [max(1, round(args.teacher_epochs * 2 / 3))]}}))
            row = test_metrics(load_model(teacher_dir / "best"), test, gt, args.occlusion)
            row["train_seconds"] = run_seconds(teacher_dir)
            results.setdefault("teacher (camera+LiDAR, triplet)", []).append(row)
            print(f"seed {seed} teacher: {row}", flush=True)
        for name, (overrides, needs_teacher) in variants.items():
            classify = overrides.get("loss", {}).get("task") == "cosface"
            epochs = args.classify_epochs if classify else args.triplet_epochs
            cfg = merge(merge(base, overrides), {
                "seed": seed, "out_dir": str(args.work / f"seed{seed}" / slug(name)),
                "optim": {"epochs": epochs, "milestones": [max(1, round(epochs * 2 / 3))]}})
            if classify:
                cfg["optim"]["student_lr"] = args.classify_lr
                if cfg["classify"].get("labels") == "heading":  # every (N x N x L) group, as for the others
                    cfg["classify"]["groups"] = args.group_spacing ** 2 * cfg["classify"]["heading_groups"]
            cfg["distill"] = {"method": "none", **cfg.get("distill", {})}
            if needs_teacher:
                cfg["distill"]["teacher"] = str(teacher_dir / "best")
            run_dir = train_or_reuse(train_student, cfg)
            row = test_metrics(load_model(run_dir / "best"), test, gt, args.occlusion)
            row |= clustering_summary(run_dir) | {"train_seconds": run_seconds(run_dir)}
            results.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: R@1 {row['all/recall@1']:.3f}, same {row['same_direction/recall@1']:.3f}, "
                  f"opposite {row['opposite_direction/recall@1']:.3f}, occluded {row['occluded/recall@1']:.3f} "
                  f"({row['train_seconds']:.0f} s)", flush=True)
            write_json(args.out / "results.json", to_jsonable({"seeds": args.seeds, "results": results}))

    minutes = saved.get("minutes") if args.report_only else (time.perf_counter() - started) / 60
    recall_keys = [f"{s}/recall@{n}" for s in ("all", *SUBSETS) for n in (1, 5)]
    table = mean_std_table(results, recall_keys + ["train_seconds"])
    cluster_rows = {k: v for k, v in results.items() if any("clustering/churn" in r for r in v)}
    cluster_table = mean_std_table(cluster_rows, ["clustering/churn", "clustering/partition_churn",
                                                  "clustering/purity", "clustering/group_purity_last"])
    queries = {s: results[next(iter(results))][0][f"{s}/queries"] for s in SUBSETS}
    command = (f".venv/bin/python benchmarks/mutualvpr_experiment.py --world {args.world} --out {args.out} "
               f"--seeds {' '.join(map(str, args.seeds))} --teacher-epochs {args.teacher_epochs} "
               f"--triplet-epochs {args.triplet_epochs} --classify-epochs {args.classify_epochs} "
               f"--classify-iterations {args.classify_iterations} --classify-lr {args.classify_lr} "
               f"--group-spacing {args.group_spacing} --image-size {' '.join(map(str, args.image_size))} "
               f"--lr-scale {args.lr_scale} --occlusion {args.occlusion}")
    text = [
        "# MutualVPR on the default synthetic world",
        "",
        f"Command: `{command}` — " + (f"{minutes:.1f} minutes on this machine (2 CPU cores)." if minutes else
                                      "**interrupted**: the table holds the seeds that finished (column `seeds`)."),
        "",
        "Camera-only students; test region, cross-run R@N averaged over ordered run pairs; query subsets "
        f"(queries summed over pairs): same direction {queries['same_direction']}, opposite direction "
        f"{queries['opposite_direction']}, occluded (moving traffic > {args.occlusion:.0%} of the image) "
        f"{queries['occluded']}. Mean ± std over seeds; model selection on the validation region.",
        "",
        table,
        "",
        "Clustering diagnostics (mean over the epochs that re-clustered; purity against true 90° heading bins):",
        "",
        cluster_table,
        "",
        "![R@1 by query subset](mutualvpr_r1.png)",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(text))
    if not args.report_only:
        write_json(args.out / "results.json", to_jsonable({"seeds": args.seeds, "minutes": minutes, "command": command,
                                                           "results": results}))
    plot_subsets(results, args.out / "mutualvpr_r1.png")
    print("\n".join(text))
    print(json.dumps({"minutes": round(minutes, 1) if minutes else None}))


if __name__ == "__main__":
    main()
