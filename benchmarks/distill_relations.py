"""Why does (or doesn't) relational distillation help? Relation statistics of trained students (issue 12).

For the training frames of a world (clean inputs, the feature cache), the teacher's cached raw
descriptors and each given student's raw descriptors on a random sample of frames, all pairs of the
sample are split by category:

* ``near_same``: within ``--near-m`` (default 25 m, the evaluation's "correct" radius) and headings
  within 90°; ``near_opposite``: within ``--near-m``, headings more than 90° apart (what a yaw-invariant
  teacher relates and a forward camera cannot see); ``far``: farther than 50 m (negatives).

Per model and category: the mean RKD-normalised distance (distance / mean over all pairs of the sample),
the Pearson correlation between the teacher's and the model's normalised distances, and, over all
pairs, the Poincaré saturation of the self-agent hyperbolic term (share of descriptors whose
``‖x‖·√c`` maps to the projection radius, share of pairwise distances at the artanh clamp). Loss
scales and per-term gradient norms come from the runs' ``history.json`` (``distill.grad_norm_every``).

    .venv/bin/python benchmarks/distill_relations.py --world data/world_default \\
        --teacher runs/teacher/best --runs nokd=runs/nokd sc=runs/sc --out docs/results/distilvpr/relations.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distilvpr_ros.losses import manifolds as M
from distilvpr_ros.models.checkpoint import load_model
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.training.data import TrainingData, open_split
from distilvpr_ros.training.distributed import init_distributed
from distilvpr_ros.training.relation_pairs import frame_headings, same_direction
from distilvpr_ros.training.trainer import compute_teacher_cache
from distilvpr_ros.utils.results import write_json

CATEGORIES = ("near_same", "near_opposite", "far")


def categories(positions: np.ndarray, headings: np.ndarray, near_m: float, far_m: float) -> dict[str, np.ndarray]:
    dist = np.linalg.norm(positions[:, None] - positions[None, :], axis=2)
    off = ~np.eye(len(positions), dtype=bool)
    same = same_direction(headings)
    near = (dist <= near_m) & off
    return {"near_same": near & same, "near_opposite": near & ~same, "far": dist > far_m}


def relation_stats(teacher: torch.Tensor, model: torch.Tensor, masks: dict[str, np.ndarray], c: float) -> dict:
    dt, ds = torch.cdist(teacher, teacher), torch.cdist(model, model)
    off = ~torch.eye(len(dt), dtype=torch.bool)
    dt, ds = (dt / dt[off].mean()).numpy(), (ds / ds[off].mean()).numpy()
    out = {}
    for name, mask in masks.items():
        if mask.sum() < 3:
            continue
        out[name] = {"pairs": int(mask.sum()), "teacher_mean": float(dt[mask].mean()),
                     "model_mean": float(ds[mask].mean()),
                     "pearson": float(np.corrcoef(dt[mask], ds[mask])[0, 1])}
    ball = M.to_poincare(model.double(), c)
    radius = M.ball_radius(c)
    poincare = M.pairwise_poincare(ball, c=c)
    clamp = 2 / c**0.5 * float(M.artanh(torch.tensor(1.0, dtype=torch.float64)))
    out["raw_norm_median"] = float(model.norm(dim=1).median())
    out["on_ball_edge"] = float((ball.norm(dim=1) >= radius * (1 - 1e-6)).double().mean())
    out["poincare_at_clamp"] = float((poincare[off] >= clamp * (1 - 1e-3)).double().mean())
    return out


def history_summary(run: Path) -> dict:
    history = json.loads((run / "history.json").read_text())
    keys = sorted({k for r in history for k in r if k.startswith("train/") and not k.startswith("train/num")})
    return {"epochs": len(history), "steps": int(sum(r["steps"] for r in history)),
            "val/recall@1": [round(r["val/recall@1"], 4) for r in history],
            "first_epoch": {k: history[0].get(k) for k in keys}, "last_epoch": {k: history[-1].get(k) for k in keys}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint folder")
    p.add_argument("--runs", nargs="+", required=True, help="name=run folder (its best/ is loaded)")
    p.add_argument("--cache", type=Path, default=None, help="feature_cache.dir of the runs (reuses their features)")
    p.add_argument("--frames", type=int, default=600, help="random training frames in the sample")
    p.add_argument("--near-m", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)

    base = {"data": {"root": str(args.world), "train_conditions": ["day", "dusk", "fog", "autumn"],
                     "val_conditions": ["day", "dusk", "fog", "autumn"]},
            "model": {"image_size": [160, 120], "freeze_stages": 5}, "progress": False, "threads": 1,
            "feature_cache": {"dir": str(args.cache) if args.cache else None}}
    cfg = TrainConfig.from_yaml(None, base)
    teacher = load_model(args.teacher)
    sequences = open_split(cfg.data, "train")
    # the trainer's teacher cache (clean raw descriptors of every training frame; from --cache when there)
    all_teacher = compute_teacher_cache(teacher, cfg, sequences, init_distributed())
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(all_teacher), size=min(args.frames, len(all_teacher)), replace=False))
    positions = np.concatenate([np.asarray(seq.poses)[:, :2, 3] for seq in sequences])[sample]
    headings = frame_headings(sequences)[sample]
    masks = categories(positions, headings, args.near_m, cfg.ground_truth.non_negative_m)
    c = cfg.distill.curvature
    t = all_teacher[sample]
    result = {"frames": len(sample), "near_m": args.near_m, "curvature": c,
              "teacher": relation_stats(t, t, masks, c), "models": {}}
    for item in args.runs:
        name, run = item.split("=", 1)
        run = Path(run)
        model = load_model(run / "best")
        student_data = TrainingData(cfg, model, sequences)
        s = student_data.embed(model, list(sample), 64)["fused"]
        result["models"][name] = {"relations": relation_stats(t, s, masks, c), "history": history_summary(run)}
        print(name, json.dumps(result["models"][name]["relations"], indent=1), flush=True)
    write_json(args.out, result)
    print(json.dumps(result["teacher"], indent=1))


if __name__ == "__main__":
    main()
