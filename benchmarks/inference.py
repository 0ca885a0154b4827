"""Inference time per frame of each deployed model: torch vs ONNX Runtime, and the compute bound.

For the camera student, the teacher (image + precomputed BEV) and the LiDAR student at the deployed
input size: median ms/frame at batch 1 in torch (eval, inference mode) and in ONNX Runtime (CPU
provider, same thread count), their ratio, the model's FLOPs (torch's FlopCounterMode) and the
time those FLOPs would take at the machine's measured dense matmul throughput (the compute bound).

    .venv/bin/python benchmarks/inference.py --image-size 320 240 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from distilvpr_ros.models import ModelConfig, build_model
from distilvpr_ros.models.export import OnnxRunner, export_onnx


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Measured float32 dense matmul throughput (GFLOP/s) with the current torch thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = median_ms(lambda: a @ b, repeats)
    return 2 * n**3 / (ms / 1000) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, nargs=2, default=[320, 240])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/inference.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(image_size=tuple(args.image_size))
    gflops = matmul_gflops()
    result = {"image_size": args.image_size, "threads": args.threads, "matmul_gflops": gflops,
              "load_average_before": list(os.getloadavg()), "models": {}}
    print(f"dense matmul: {gflops:.1f} GFLOP/s with {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("camera_student", "teacher", "lidar_student"):
            model = build_model(kind, cfg).eval()
            inputs = model.input_spec.example_inputs(batch=1)
            with torch.inference_mode():
                torch_ms = median_ms(lambda: model(**inputs), args.repeats)
                with FlopCounterMode(display=False) as counter:
                    model(**inputs)
            path = export_onnx(model, Path(tmp) / f"{kind}.onnx")
            runner = OnnxRunner(path, intra_op_num_threads=args.threads)
            feeds = {k: v.numpy() for k, v in inputs.items()}
            ort_ms = median_ms(lambda: runner(**feeds), args.repeats)
            flops = counter.get_total_flops()
            row = {"torch_ms": torch_ms, "onnxruntime_ms": ort_ms, "ort_speedup": torch_ms / ort_ms,
                   "gflops_per_frame": flops / 1e9, "compute_bound_ms": flops / (gflops * 1e9) * 1000}
            row["ort_over_bound"] = ort_ms / row["compute_bound_ms"]
            result["models"][kind] = row
            print(f"{kind:>15}: torch {torch_ms:6.1f} ms | ORT {ort_ms:6.1f} ms ({row['ort_speedup']:.1f}x) | "
                  f"{row['gflops_per_frame']:.2f} GFLOP -> bound {row['compute_bound_ms']:.1f} ms "
                  f"(ORT at {row['ort_over_bound']:.1f}x the bound)", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
