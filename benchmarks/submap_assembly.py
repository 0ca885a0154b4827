"""Submap assembly per keyframe in the mapping node's path (``TrailingSubmaps``), one thread, clouds in memory.

The mapping node builds each keyframe's trailing LiDAR submap with :class:`~distilvpr_ros.data.submap.
TrailingSubmaps` (``MapBuilder.add_keyframe``: ``submap`` before the teacher's forward, then ``add``). This
replays the first ``--keyframes`` scans of one run of ``--world`` (its ground-truth poses as odometry, one
keyframe per scan, ~5 m apart) and times ``submap`` (wall and this process's CPU time, which a loaded
machine inflates less; the minimum over ``--repeats`` replays per keyframe, then p50 / p90) for every
keyframe once the window is full, for each
``--lengths`` D, with the default settings (every point of every scan: the result is bit-equal to the
offline ``accumulate_submap``) and with each ``--scan-voxels`` (``submap.scan_voxel_m``: each scan
voxel-filtered once, when it arrives; the time includes filtering the keyframe's own scan).

What the filter changes in what the descriptor reads: per keyframe, the cosine between the
``scan_context_fft`` descriptor (and the max-height Scan Context grid) of the filtered submap and of the full
one, min and median over the keyframes, and the largest absolute change of a grid cell (heights normalised
to [0, 1] over ``scan_context_grid``'s z span); with ``--lidar-model PATH`` also that model's descriptor cosine.

    .venv/bin/python benchmarks/submap_assembly.py --out docs/results/benchmarks/submap_assembly.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from distilvpr_ros.data.submap import SubmapConfig, TrailingSubmaps, accumulate_submap, lidar_extrinsic
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.models.classical import fft_descriptor, scan_context
from distilvpr_ros.models.config import scan_context_grid
from distilvpr_ros.utils.results import write_json


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def replay(clouds, poses, stamps, cfg: SubmapConfig, base_T_lidar, warm: int) -> tuple[list[float], list, int]:
    """ms of ``TrailingSubmaps.submap`` per keyframe after ``warm`` keyframes, the submaps, and the scans of the
    last one."""
    live = TrailingSubmaps(cfg, base_T_lidar)
    times, subs, scans = [], [], 0
    for i in range(len(clouds)):
        t, c = time.perf_counter(), time.process_time()
        sub = live.submap(stamps[i], poses[i], clouds[i])
        if i >= warm:
            times.append((1e3 * (time.perf_counter() - t), 1e3 * (time.process_time() - c)))
            subs.append(sub.cloud)
            scans = sub.scans
        live.add(stamps[i], poses[i], clouds[i])
    return times, subs, scans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--run", type=int, default=0, help="index of the run replayed")
    p.add_argument("--keyframes", type=int, default=60)
    p.add_argument("--lengths", type=float, nargs="+", default=[20.0, 50.0])
    p.add_argument("--scan-voxels", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--repeats", type=int, default=3, help="replays per setting (the minimum per keyframe is kept)")
    p.add_argument("--lidar-model", default=None,
                   help="also compare this LiDAR model's descriptors (checkpoint folder)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/submap_assembly.json"))
    args = p.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    run = load_synthetic(args.world)[args.run]
    n = min(args.keyframes, len(run))
    clouds = [run.cloud(i) for i in range(n)]
    poses, stamps = np.asarray(run.poses[:n]), np.asarray(run.timestamps[:n], dtype=float)
    base_T_lidar = lidar_extrinsic(run)
    grid = scan_context_grid()
    model = None
    if args.lidar_model:
        from distilvpr_ros.models.checkpoint import load_model
        from distilvpr_ros.models.inference import embed_batch
        from distilvpr_ros.models.preprocess import cloud_to_bev

        model = load_model(args.lidar_model)

        def embed(clouds_: list) -> np.ndarray:
            return embed_batch(model, {"cloud": np.stack([cloud_to_bev(c, model.input_spec.bev) for c in clouds_])})
    out = {"command": ".venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "world": str(args.world), "run": run.run, "keyframes": n,
           "points_per_scan_mean": float(np.mean([len(c) for c in clouds])),
           "keyframe_spacing_m": float(np.median(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1))),
           "load_average_before": list(os.getloadavg()), "cpu_count": os.cpu_count(), "results": {}}
    for length in args.lengths:
        base = SubmapConfig(length_m=length)
        warm = int(np.ceil(length / max(out["keyframe_spacing_m"], 1e-6))) + 1
        reference = None
        for voxel in [None, *args.scan_voxels]:
            cfg = base.model_copy(update={"scan_voxel_m": voxel})
            runs = [replay(clouds, poses, stamps, cfg, base_T_lidar, warm) for _ in range(args.repeats)]
            ms = np.min([r[0] for r in runs], axis=0)  # keyframes x (wall, cpu)
            subs, scans = runs[0][1], runs[0][2]
            row = {"scan_voxel_m": voxel, "scans": scans, "keyframes_timed": len(ms),
                   "ms_p50": float(np.median(ms[:, 0])), "ms_p90": float(np.percentile(ms[:, 0], 90)),
                   "cpu_ms_p50": float(np.median(ms[:, 1])), "cpu_ms_p90": float(np.percentile(ms[:, 1], 90)),
                   "points_mean": float(np.mean([len(s) for s in subs]))}
            grids = [scan_context(s, grid) for s in subs]
            if model is not None:
                descs = embed(subs)
            if reference is None:
                reference = grids
                reference_descs = descs if model is not None else None
                offline = [accumulate_submap(clouds, poses, warm + k, base, base_T_lidar) for k in range(len(subs))]
                row["equal_to_offline"] = all(np.array_equal(a, b) for a, b in zip(subs, offline))
            else:
                fft = [cosine(fft_descriptor(a), fft_descriptor(b)) for a, b in zip(grids, reference)]
                sc = [cosine(a, b) for a, b in zip(grids, reference)]
                row.update(fft_cosine_min=float(np.min(fft)), fft_cosine_median=float(np.median(fft)),
                           grid_cosine_min=float(np.min(sc)),
                           grid_max_abs_diff=float(max(np.abs(a - b).max() for a, b in zip(grids, reference))))
                if model is not None:
                    m = [cosine(a, b) for a, b in zip(descs, reference_descs)]
                    row.update(model=args.lidar_model, model_cosine_min=float(np.min(m)),
                               model_cosine_median=float(np.median(m)))
            key = f"{length:g}m_" + ("all_points" if voxel is None else f"scan_voxel_{voxel:g}m")
            out["results"][key] = row
            print(f"{key:<24} {scans:>2} scans  {row['points_mean']:>9.0f} points  p50 {row['ms_p50']:6.2f} ms  "
                  f"p90 {row['ms_p90']:6.2f} ms  CPU p50 {row['cpu_ms_p50']:6.2f} ms"
                  + (f"  fft cos min {row['fft_cosine_min']:.4f}" if "fft_cosine_min" in row else
                     f"  equal to offline: {row['equal_to_offline']}")
                  + (f"  model cos min {row['model_cosine_min']:.4f}" if "model_cosine_min" in row else ""), flush=True)
    out["load_average_after"] = list(os.getloadavg())
    write_json(args.out, out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
