"""Multi-session maps measured: merge two sessions' maps (one in a planted frame), check the recovered transform
and that the merged map localises queries from both sessions as well as the single-session maps do.

    python benchmarks/multisession.py --world data/world_slam --teacher T --student S --out results/multisession

Session a: run 0 of the world (ground-truth poses, the world frame). Session b: run 1 with its poses in a
planted frame (``--offset x,y,yaw_deg``: b's poses are ``inv(offset) @ truth``, so the merge should recover
``offset``). Queries: each session's frames (every ``--stride``) localised, with verification, against the
other session's single map (truth in that map's frame) and against the merged map (truth in a's frame);
session a's also against its own map (its earlier lap: the matcher hides the last 30 s of its own run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distilvpr_ros.data.geometry import invert, pose_from_xyz_yaw
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.pipeline.calibration import resolve_calibration
from distilvpr_ros.pipeline.config import STUDENT_SPACE, NodeConfig
from distilvpr_ros.pipeline.embedder import Embedder
from distilvpr_ros.pipeline.localizer import Localizer
from distilvpr_ros.pipeline.multisession import load_map, merge_maps
from distilvpr_ros.pipeline.offline import build_map_from_sequence, localize_sequence
from distilvpr_ros.slam.evaluate import DriftedRun

KEYS = ("queries", "queries_with_match", "before", "after", "pose_error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--offset", default="40,-25,30", help="planted frame of session b: x,y,yaw_deg")
    p.add_argument("--stride", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y, yaw = (float(v) for v in args.offset.split(","))
    planted = pose_from_xyz_yaw(x, y, 0.0, np.deg2rad(yaw))
    runs = load_synthetic(Path(args.world))
    a_run, b_run = runs[0], runs[1]
    b_planted = DriftedRun(b_run, np.einsum("ij,njk->nik", invert(planted), b_run.poses))
    cfg = NodeConfig()
    cfg.map.resume = False
    t0 = time.perf_counter()
    build_map_from_sequence(a_run, args.teacher, args.student, out / "a", cfg)
    build_map_from_sequence(b_planted, args.teacher, args.student, out / "b", cfg)
    t_build = time.perf_counter() - t0
    summary = merge_maps(out / "a", out / "b", out / "merged")
    T = np.array(summary["alignment"]["transform"])
    err_m = float(np.linalg.norm(T[:3, 3] - planted[:3, 3]))
    err_deg = float(np.degrees(np.arccos(np.clip((np.trace(T[:3, :3].T @ planted[:3, :3]) - 1) / 2, -1, 1))))

    student = Embedder.from_checkpoint(args.student, STUDENT_SPACE, cfg.models.num_threads)
    calibration = resolve_calibration(cfg.calibration, a_run)

    def localize(map_dir: Path, queries) -> dict:
        loc = Localizer(student, load_map(map_dir), cfg.matcher, None, cfg.image_quality, cfg.verification, calibration)
        s = localize_sequence(loc, queries, stride=args.stride)
        return {k: s.get(k) for k in KEYS}

    results = {
        "a_queries": {"single_map_a": localize(out / "a", a_run),
                      "single_map_b": localize(out / "b", DriftedRun(a_run, np.einsum(
                          "ij,njk->nik", invert(planted), a_run.poses))),
                      "merged": localize(out / "merged", a_run)},
        "b_queries": {"single_map_a": localize(out / "a", b_run), "merged": localize(out / "merged", b_run)},
    }
    report = {"world": args.world, "sessions": [a_run.run, b_run.run], "planted_offset": [x, y, yaw],
              "merge": summary, "transform_error_m": err_m, "transform_error_deg": err_deg,
              "build_seconds": round(t_build, 1), "localization": results}
    (out / "multisession.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("transform_error_m", "transform_error_deg", "localization")}, indent=1,
                     default=str))
    print(json.dumps(summary["alignment"] | {"anchor_pairs": len(summary["alignment"]["anchor_pairs"])}, default=str))


if __name__ == "__main__":
    main()
