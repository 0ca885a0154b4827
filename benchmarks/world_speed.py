"""Rendering speed of the synthetic world: frames per second for the camera, the LiDAR and both.

Renders ``--frames`` consecutive frames of one run of the ``default`` world (320x240 camera,
32x1024 LiDAR unless overridden by ``--config``), with the run's moving objects, and reports:

* ``camera_fps`` / ``lidar_fps`` / ``both_fps``: one frame after the other in one thread (open3d
  ray casting uses all cores);
* ``both_fps_workers``: camera+LiDAR frames rendered by ``render.workers`` threads at once
  (numpy shading of one frame overlaps ray casting of another);
* ``both_fps_processes``: camera+LiDAR frames rendered by ``render.processes`` processes, each
  ray-casting on one thread, as ``generate_world`` renders runs in parallel (start-up excluded);

per condition (``--runs`` picks runs of the preset by index). Writes the numbers as JSON.

    python benchmarks/world_speed.py --frames 60 --out results/benchmarks/world_speed.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open3d as o3d

from distilvpr_ros.data.world.config import load_world_config
from distilvpr_ros.data.world.generate import RunRenderer


def _fps(n: int, fn) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


_WORKER: dict = {}


def _init_worker(cfg, run: int) -> None:
    cfg = cfg.model_copy(update={"render": cfg.render.model_copy(update={"threads": 1})})
    _WORKER["rr"] = RunRenderer.for_run(cfg, run)


def _render_in_worker(k: int) -> int:
    _WORKER["rr"].render(k)
    return k


def processes_fps(cfg, run: int, frames: int, processes: int) -> float:
    """Frames/s of ``processes`` single-threaded renderer processes on the first ``frames`` frames."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes, initializer=_init_worker, initargs=(cfg, run)) as pool:
        pool.map(_render_in_worker, range(processes), chunksize=1)  # start-up and warm-up
        return _fps(frames, lambda: pool.map(_render_in_worker, range(frames), chunksize=2))


def bench_run(rr: RunRenderer, frames: int, workers: int) -> dict:
    ks = list(range(min(frames, len(rr.traj))))
    poses, R = rr.poses, rr.renderer
    dyn = [R.dynamic_scene(rr.traffic.mesh_at(rr.traj, k)) for k in ks]
    rng = np.random.default_rng(0)
    rr.render(ks[0])  # warm-up
    out = {
        "frames": len(ks),
        "camera_fps": _fps(len(ks), lambda: [R.render_camera(poses[k], dyn[i], rng) for i, k in enumerate(ks)]),
        "lidar_fps": _fps(len(ks), lambda: [R.render_lidar(poses[k], dyn[i], rng) for i, k in enumerate(ks)]),
        "both_fps": _fps(len(ks), lambda: [rr.render(k) for k in ks]),
    }
    with ThreadPoolExecutor(workers) as pool:
        out["both_fps_workers"] = _fps(len(ks), lambda: list(pool.map(rr.render, ks)))
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60, help="frames per measurement (default 60)")
    p.add_argument("--preset", default="default")
    p.add_argument("--config", type=Path, default=None, help="YAML overrides of the preset")
    p.add_argument("--runs", type=int, nargs="*", default=None, help="run indices (default: all runs of the preset)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/world_speed.json"))
    args = p.parse_args()

    cfg = load_world_config(args.preset, args.config, None)
    runs = args.runs if args.runs is not None else list(range(len(cfg.runs)))
    result = {
        "preset": args.preset,
        "camera": f"{cfg.camera.width}x{cfg.camera.height}",
        "lidar": f"{cfg.lidar.beams}x{cfg.lidar.columns}",
        "shadows": cfg.render.shadows,
        "workers": cfg.render.workers,
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "machine": platform.processor() or platform.machine(),
        "open3d": o3d.__version__,
        "runs": {},
    }
    for i in runs:
        rr = RunRenderer.for_run(cfg, i)
        r = bench_run(rr, args.frames, cfg.render.workers)
        r["both_fps_processes"] = round(processes_fps(cfg, i, min(args.frames, len(rr.traj)), cfg.render.processes), 2)
        result["runs"][cfg.run_ids()[i]] = r
        print(f"{cfg.run_ids()[i]:>22}: camera {r['camera_fps']:6.1f} fps | LiDAR {r['lidar_fps']:6.1f} fps | "
              f"both {r['both_fps']:6.1f} fps | {cfg.render.workers} threads {r['both_fps_workers']:6.1f} fps | "
              f"{cfg.render.processes} processes {r['both_fps_processes']:6.1f} fps")
    for key in ("camera_fps", "lidar_fps", "both_fps", "both_fps_workers", "both_fps_processes"):
        result[f"mean_{key}"] = round(float(np.mean([r[key] for r in result["runs"].values()])), 2)
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean: camera {result['mean_camera_fps']} fps, LiDAR {result['mean_lidar_fps']} fps, both "
          f"{result['mean_both_fps']} fps, threads {result['mean_both_fps_workers']} fps, processes "
          f"{result['mean_both_fps_processes']} fps -> {args.out}")


if __name__ == "__main__":
    main()
