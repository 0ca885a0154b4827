"""Inference time per frame of each deployed model: torch vs ONNX Runtime, and the compute bound.

Models: the teacher (camera + LiDAR BEV; what ``distilvpr_mapping`` runs, in torch), the camera student
(what ``distilvpr_localization`` runs, ONNX Runtime by default) and the LiDAR student. Each is measured

* at the **deployed** resolution: the checkpoints given (``--teacher``, ``--student``,
  ``--lidar-student``) or found under ``--results`` (the ``best`` of a training run; the
  experiment's are 160x120), with their trained weights; skipped with a message when none exists;
* at each ``--image-sizes`` (default 320x240, the paper's and ``ModelConfig``'s default) with the same
  architecture, untrained (weights do not change the time).

Per model and size: median ms/frame at batch 1 in torch (eval, inference mode) and in ONNX Runtime
(CPU provider, same thread count), their ratio, the model's FLOPs (torch's ``FlopCounterMode``), the
time those FLOPs take at the machine's measured dense float32 matmul throughput (the compute bound) and
ORT's ratio to it; plus the numpy preprocessing a node does per frame (``image_to_tensor`` of a
320x240 camera image, ``cloud_to_bev`` of a real 32-beam cloud from ``--world``) and the end-to-end
ORT time (preprocessing + network).

    .venv/bin/python benchmarks/inference.py --out docs/results/benchmarks/inference.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from distilvpr_ros.models import ModelConfig, build_model
from distilvpr_ros.models.export import OnnxRunner, export_onnx
from distilvpr_ros.models.preprocess import cloud_to_bev, image_to_tensor
from distilvpr_ros.models.checkpoint import load_model

KINDS = {  # kind -> (option, preferred run folder names under results/)
    "camera_student": ("student", ("camera__DistilVPR_SC", "student")),
    "teacher": ("teacher", ("teacher",)),
    "lidar_student": ("lidar_student", ("lidar__DistilVPR_SC",)),
}


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


def find_checkpoint(results: Path, kind: str, preferred: tuple[str, ...]) -> Path | None:
    """A ``best`` checkpoint folder under ``results`` holding ``kind``.

    Preferred run names first; among equals the DistilVPR experiment's (``docs/results/distilvpr``, seed 1
    first) before other runs (e.g. the demo's), then sorted by path.
    """
    found = []
    metas = sorted(results.glob("**/best/checkpoint.json"),
                   key=lambda m: ("experiment_distilvpr" not in m.as_posix(), m.as_posix()))
    for meta in metas:
        try:
            if json.loads(meta.read_text()).get("kind") == kind:
                found.append(meta.parent)
        except (OSError, json.JSONDecodeError):
            continue
    for name in preferred:
        for path in found:
            if path.parent.name == name:
                return path
    return found[0] if found else None


def sensor_frame(world: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """A camera image and LiDAR cloud to preprocess: the world's first frame, else synthetic ones."""
    try:
        from distilvpr_ros.data.synthetic import load_synthetic

        sample = load_synthetic(world)[0][0]
        return sample.image, sample.cloud, f"{world} run {sample.run} frame 0"
    except Exception as e:  # no world generated: shapes of the default world's sensors
        rng = np.random.default_rng(0)
        cloud = np.zeros((30000, 6), np.float32)
        cloud[:, :3] = rng.normal(scale=20.0, size=(30000, 3))
        cloud[:, 3] = rng.random(30000)
        return (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), cloud,
                f"synthetic 320x240 image and 30000-point cloud ({type(e).__name__}: no world at {world})")


def measure(kind: str, model, image: np.ndarray, cloud: np.ndarray, gflops: float, args, tmp: Path, tag: str) -> dict:
    spec = model.input_spec
    inputs = spec.example_inputs(batch=1)
    with torch.inference_mode():
        torch_ms = median_ms(lambda: model(**inputs), args.repeats)
        with FlopCounterMode(display=False) as counter:
            model(**inputs)
    path = export_onnx(model, tmp / f"{kind}_{tag}.onnx")
    runner = OnnxRunner(path, intra_op_num_threads=args.threads)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    ort_ms = median_ms(lambda: runner(**feeds), args.repeats)
    pre_ms = 0.0
    if "image" in spec.inputs:
        pre_ms += median_ms(lambda: image_to_tensor(image, spec.image_size), args.repeats)
    if "cloud" in spec.inputs:
        pre_ms += median_ms(lambda: cloud_to_bev(cloud, spec.bev), args.repeats)
    flops = counter.get_total_flops()
    row = {"kind": kind, "image_size": list(spec.image_size) if spec.image_size else None,
           "torch_ms": torch_ms, "onnxruntime_ms": ort_ms, "ort_speedup": torch_ms / ort_ms,
           "gflops_per_frame": flops / 1e9, "compute_bound_ms": flops / (gflops * 1e9) * 1000,
           "preprocess_ms": pre_ms, "end_to_end_ort_ms": pre_ms + ort_ms}
    row["ort_over_bound"] = ort_ms / row["compute_bound_ms"]
    size = "x".join(map(str, spec.image_size)) if spec.image_size else "BEV only"
    print(f"{kind:>15} {tag:<9} {size:>8}: torch {torch_ms:6.1f} ms | ORT {ort_ms:6.1f} ms "
          f"({row['ort_speedup']:.1f}x) | {row['gflops_per_frame']:.2f} GFLOP -> "
          f"bound {row['compute_bound_ms']:.2f} ms "
          f"(ORT {row['ort_over_bound']:.1f}x) | preprocess {pre_ms:.1f} ms -> ORT end to end "
          f"{row['end_to_end_ort_ms']:.1f} ms", flush=True)
    return row


def markdown(result: dict) -> str:
    lines = ["# Inference per frame (batch 1)", "",
             f"Command: `{result['command']}`", "",
             f"{result['threads']} thread(s); dense float32 matmul {result['matmul_gflops']:.0f} GFLOP/s (the compute "
             f"bound = FLOPs / that). Preprocessing: `image_to_tensor` of a 320x240 image and/or `cloud_to_bev` of "
             f"{result['sensor_frame']}. Load average before/after: {result['load_average_before'][0]:.2f} / "
             f"{result['load_average_after'][0]:.2f} on {result['cpu_count']} cores.", "",
             "| model | weights | input | torch ms | ORT ms | ORT speed-up | GFLOP | bound ms | ORT / bound "
             "| preprocess ms | ORT end to end ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        size = "x".join(map(str, r["image_size"])) + (" + BEV" if r["kind"] == "teacher" else "") \
            if r["image_size"] else "BEV 64x64"
        lines.append(f"| {r['kind']} | {r['weights']} | {size} | {r['torch_ms']:.1f} | {r['onnxruntime_ms']:.1f} | "
                     f"{r['ort_speedup']:.1f}x | {r['gflops_per_frame']:.2f} | {r['compute_bound_ms']:.2f} | "
                     f"{r['ort_over_bound']:.1f}x | {r['preprocess_ms']:.1f} | {r['end_to_end_ort_ms']:.1f} |")
    for kind, why in result["skipped"].items():
        lines += ["", f"No deployed {kind}: {why}."]
    lines += ["", "On a loaded machine (load average above the core count) torch with 2 OpenMP threads can stall "
              "in spin-waits (seen here: 1.5 s instead of 30 ms per frame); measure with `--threads 1` there, "
              "or set `OMP_WAIT_POLICY=PASSIVE`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-sizes", nargs="*", default=["320x240"],
                   help="extra image sizes WxH measured with untrained models of the same architecture")
    for kind, (option, _) in KINDS.items():
        p.add_argument(f"--{option.replace('_', '-')}", type=Path, default=None,
                       help=f"deployed {kind} checkpoint folder (default: searched under --results)")
    p.add_argument("--results", type=Path, default=Path("results"), help="where to look for checkpoints")
    p.add_argument("--world", type=Path, default=Path("data/world_default"), help="a frame to preprocess")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/inference.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    image, cloud, frame = sensor_frame(args.world)
    gflops = matmul_gflops()
    result = {"command": ".venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "threads": args.threads, "matmul_gflops": gflops, "cpu_count": os.cpu_count(),
              "sensor_frame": frame, "load_average_before": list(os.getloadavg()), "rows": [], "skipped": {}}
    print(f"dense matmul: {gflops:.1f} GFLOP/s with {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (option, preferred) in KINDS.items():
            path = getattr(args, option) or find_checkpoint(args.results, kind, preferred)
            if path is None:
                why = f"no checkpoint given (--{option.replace('_', '-')}) or found under {args.results}"
                print(f"{kind:>15} deployed : skipped ({why})", flush=True)
                result["skipped"][kind] = why
            else:
                row = measure(kind, load_model(path, expect_kind=kind), image, cloud, gflops, args, Path(tmp),
                              "deployed")
                result["rows"].append({**row, "weights": f"`{path}`"})
            for size in args.image_sizes:
                width, height = (int(v) for v in size.lower().split("x"))
                if kind == "lidar_student" and size != args.image_sizes[0]:
                    continue  # no image input: one untrained row is enough
                model = build_model(kind, ModelConfig(image_size=(width, height), pretrained=False)).eval()
                row = measure(kind, model, image, cloud, gflops, args, Path(tmp), size)
                result["rows"].append({**row, "weights": "untrained, default architecture"})
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"-> {args.out}, {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
