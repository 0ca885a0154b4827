"""Training step time of the camera student with each distillation loss (and of the teacher).

A step is what the trainer does per batch: the trainable part of the student forward (on cached
frozen features when ``--freeze-stages`` > 0, as the experiment trains), the task loss (0.5 x
batch-hard triplet), the distillation loss against cached teacher descriptors, backward and an Adam
step. Inputs are random with a realistic pair structure (B/2 places, two frames each). Prints one
line per method with the median step time and the ratio to the plain (no KD) step, and writes JSON.
The methods' steps are timed round-robin (one step of each method per round), so a change of machine
load during the run affects every method alike. Issue 12's target: DistilVPR-SC <= 1.15 x the plain
step at batch 128 (issue 5's was 1.25 x).

    .venv/bin/python benchmarks/train_step.py --batch-size 128 --image-size 160 120 --freeze-stages 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from distilvpr_ros.losses import DISTILL_METHODS, MultiHeadTripletLoss, make_distill_loss
from distilvpr_ros.losses.task import STUDENT_HEAD_WEIGHTS
from distilvpr_ros.models import ModelConfig, build_model


def pair_masks(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a pair batch: elements 2i and 2i+1 are the same place, every other pair a negative."""
    place = torch.arange(batch) // 2
    same = place[:, None] == place[None, :]
    return same & ~torch.eye(batch, dtype=torch.bool), ~same


def time_round_robin(steps: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each step per round; every round runs each step once, in order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    return times


def student_step_fn(cfg: ModelConfig, method: str, batch: int):
    torch.manual_seed(0)
    model = build_model("camera_student", cfg).train()
    encoder = model.image_encoder
    image = torch.rand(batch, 3, cfg.image_size[1], cfg.image_size[0])
    cached = cfg.freeze_stages > 0
    with torch.no_grad():
        inputs = encoder.frozen_features(image) if cached else image
    teacher = torch.randn(batch, model.input_spec.descriptor_dim)
    pos, neg = pair_masks(batch)
    task = MultiHeadTripletLoss(STUDENT_HEAD_WEIGHTS)
    kd = make_distill_loss(method)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4)

    def step():
        if cached:
            with encoder.frozen_input():
                out = model(image=inputs)
        else:
            out = model(image=inputs)
        loss = task(out, pos, neg)[0] + kd(out["fused"], teacher, pos, neg)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, nargs=2, default=[160, 120])
    p.add_argument("--freeze-stages", type=int, default=5, help="0: full backbone forward/backward every step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=list(DISTILL_METHODS))
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/train_step.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = ModelConfig(image_size=tuple(args.image_size), freeze_stages=args.freeze_stages)
    result = {"batch_size": args.batch_size, "image_size": args.image_size, "freeze_stages": args.freeze_stages,
              "threads": args.threads, "load_average_before": list(os.getloadavg()), "seconds": {}}
    methods = ["none"] + [m for m in args.methods if m != "none"]
    times = time_round_robin({m: student_step_fn(cfg, m, args.batch_size) for m in methods}, args.repeats)
    result["rounds"] = times
    for method in methods:
        seconds = result["seconds"][method] = float(np.median(times[method]))
        # per-round ratio to the plain step of the same round, then the median (robust to load drift)
        ratios = [t / p for t, p in zip(times[method], times["none"])]
        result.setdefault("ratio_to_plain", {})[method] = float(np.median(ratios))
        print(f"{method:>5}: {seconds * 1000:8.1f} ms/step  ({result['ratio_to_plain'][method]:.2f} x plain, "
              f"median of per-round ratios)", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"SC / plain = {result['ratio_to_plain'].get('sc', float('nan')):.2f} (target <= 1.15) -> {args.out}")


if __name__ == "__main__":
    main()
