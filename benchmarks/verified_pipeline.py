"""The verified pipeline on a generated world: a day map built by ``build_map_from_sequence`` (views + calibration
stored), camera localisation of day / night / rain query runs with and without verification, and the loop
closures LiDAR verification lets through when a second run is appended to the map.

What is measured
* Localisation (``pipeline.offline.localize_sequence``): per query run, the descriptor matcher alone
  ("before": its own accept rule, node defaults) and the verified decision ("after": top-k camera PnP against the
  map's keyframe views, node defaults): precision, recall (correct = matched keyframe within 25 m of the truth),
  metric precision (pose within 1 m / 5 deg), pose error of verified matches (median, p90), R@1 before and after
  re-ranking, latency per frame (one thread).
* Loop closures: the ``--loop-run`` is appended to a copy of the map with ``MapBuilder`` (defaults). Every keyframe's
  teacher top-1 candidate among the map run's keyframes is LiDAR-verified (``MapBuilder.verify_loop``, yaw seed from
  odometry) whatever the matcher decides, so the verifier's precision/recall do not hang on how many loops a weak
  teacher proposes; and the loop closures the builder actually emits (matcher + verification) are scored too.
  A pair is true when the keyframes' ground-truth positions are within ``--loop-m`` (10 m).

    .venv/bin/python benchmarks/verified_pipeline.py --world data/benchmarks/world_verification \\
        --teacher runs/teacher/best --student runs/student/best
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distilvpr_ros.data.synthetic import load_synthetic  # noqa: E402
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable  # noqa: E402
from distilvpr_ros.evaluation.verified_matches import flatten_scores  # noqa: E402
from distilvpr_ros.mapping.matcher import MatchResult  # noqa: E402
from distilvpr_ros.pipeline.calibration import resolve_calibration  # noqa: E402
from distilvpr_ros.pipeline.config import STUDENT_SPACE, TEACHER_SPACE, NodeConfig  # noqa: E402
from distilvpr_ros.pipeline.embedder import Embedder  # noqa: E402
from distilvpr_ros.pipeline.keyframes import Keyframer  # noqa: E402
from distilvpr_ros.pipeline.localizer import Localizer  # noqa: E402
from distilvpr_ros.pipeline.map_builder import MapBuilder  # noqa: E402
from distilvpr_ros.pipeline.offline import build_map_from_sequence, localize_sequence  # noqa: E402
from distilvpr_ros.utils.results import write_json  # noqa: E402

TABLE_KEYS = ("run", "verification", "queries_with_match", "before.accepted", "before.precision", "before.recall",
              "after.accepted", "after.precision", "after.recall", "after.metric_precision", "recall@1.before",
              "recall@1.after", "pose_error.translation_m_median", "pose_error.translation_m_p90",
              "pose_error.rotation_deg_median", "pose_error.rotation_deg_p90", "latency_ms_p50", "latency_ms_p99")


def loop_closures(map_path: Path, world: Path, loop_run, teacher, student, cfg: NodeConfig, loop_m: float) -> dict:
    """Append ``loop_run`` to a copy of the map and score LiDAR verification (module doc)."""
    from distilvpr_ros.mapping.database import PlaceDatabase

    work = map_path.with_name(map_path.name + "_loops")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(map_path, work)
    db = PlaceDatabase.load(work)
    n_map = len(db)
    builder = MapBuilder(teacher, student, db, cfg.index, cfg.matcher, loop_run.run, "map",
                         resolve_calibration(cfg.calibration, loop_run), cfg.verification, cfg.views)
    map_xy = db.positions[:n_map].copy()
    keyframer = Keyframer(cfg.keyframes)
    top1 = {"pairs": 0, "true": 0, "accepted": 0, "accepted_true": 0, "ms": []}
    emitted = {"proposed": 0, "proposed_true": 0, "verified": 0, "verified_true": 0}
    could_close = 0
    for i in range(len(loop_run)):
        pose, stamp = loop_run.poses[i], float(loop_run.timestamps[i])
        if not keyframer.check(pose, stamp).accept:
            continue
        s = loop_run[i]
        result = builder.add_keyframe(stamp, pose, s.image, s.cloud)
        keyframer.accept(pose, stamp)
        d = np.linalg.norm(map_xy - pose[:2, 3], axis=1)
        could_close += bool((d <= loop_m).any())
        cands = [c for c in builder.matcher.candidates(builder.db.descriptors(TEACHER_SPACE)[result.id], stamp,
                                                       loop_run.run) if c.id < n_map]
        if cands:  # the verifier on the teacher's top-1, whatever the matcher decided
            probe = MatchResult(stamp, True, "", cands, cands[0])
            v = builder.verify_loop(pose, builder.cache.points(result.id), probe)
            true = bool(d[cands[0].id] <= loop_m)
            top1["pairs"] += 1
            top1["true"] += true
            top1["accepted"] += v.accepted
            top1["accepted_true"] += v.accepted and true
            top1["ms"].append(v.seconds * 1e3)
        if result.proposed is not None:
            cand = result.match.best.id if result.verification is None else result.verification.candidate
            true = bool(cand < n_map and d[cand] <= loop_m)
            emitted["proposed"] += 1
            emitted["proposed_true"] += true
            if result.loop_closure is not None:
                emitted["verified"] += 1
                emitted["verified_true"] += true
    ms = top1.pop("ms")
    top1.update(precision=top1["accepted_true"] / top1["accepted"] if top1["accepted"] else float("nan"),
                recall=top1["accepted_true"] / top1["true"] if top1["true"] else float("nan"),
                ms_median=float(np.median(ms)) if ms else float("nan"))
    emitted.update(precision=emitted["verified_true"] / emitted["verified"] if emitted["verified"] else float("nan"),
                   proposed_precision=(emitted["proposed_true"] / emitted["proposed"] if emitted["proposed"]
                                       else float("nan")),
                   recall=emitted["verified_true"] / could_close if could_close else float("nan"))
    shutil.rmtree(work, ignore_errors=True)
    return {"run": loop_run.run, "keyframes_that_could_close": could_close, "teacher_top1_verified": top1,
            "emitted": emitted}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--student", type=Path, required=True)
    p.add_argument("--map-run", default="map_day")
    p.add_argument("--queries", nargs="+", default=["day_lane1", "night", "rain"])
    p.add_argument("--loop-run", default="day_lane1")
    p.add_argument("--loop-m", type=float, default=10.0)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--region", nargs="*", default=None,
                   help="only frames of these world regions (e.g. test: the demo's); default all")
    p.add_argument("--no-loops", action="store_true", help="skip the loop-closure part")
    p.add_argument("--work", type=Path, default=Path("results/verified_pipeline"))
    p.add_argument("--out", type=Path, default=Path("docs/results/verification/pipeline"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    runs = {r.run: r for r in load_synthetic(args.world, set(args.region) if args.region else None)}
    cfg = NodeConfig()
    map_path = args.work / "map"
    shutil.rmtree(map_path, ignore_errors=True)
    cfg.map.resume = False
    build = build_map_from_sequence(runs[args.map_run], args.teacher, args.student, map_path, cfg, progress=True)
    size = sum(f.stat().st_size for f in map_path.iterdir())
    views = sum(f.stat().st_size for f in map_path.glob("views_*"))
    student = Embedder.from_checkpoint(args.student, STUDENT_SPACE)
    teacher = Embedder.from_checkpoint(args.teacher, TEACHER_SPACE)
    result = {"world": str(args.world), "map_run": args.map_run, "keyframes": build["keyframes"],
              "map_bytes": size, "view_bytes_per_keyframe": views / max(build["keyframes"], 1),
              "map_bytes_per_keyframe": size / max(build["keyframes"], 1), "build": build, "localization": []}
    print(f"map: {build['keyframes']} keyframes, {size / 1e6:.1f} MB ({views / build['keyframes'] / 1e3:.1f} kB views "
          "per keyframe)")
    for run in args.queries:
        for enabled in (False, True):
            vcfg = cfg.verification.model_copy(update={"enabled": enabled})
            loc = Localizer.load(student, map_path, cfg.matcher, run, cfg.image_quality, vcfg)
            s = localize_sequence(loc, runs[run], stride=args.stride, progress=True)
            result["localization"].append(s)
            print({k: flatten_scores(s).get(k) for k in TABLE_KEYS})
    if not args.no_loops:
        result["loop_closures"] = loop_closures(map_path, args.world, runs[args.loop_run], teacher, student, cfg,
                                                args.loop_m)
        print(result["loop_closures"])
    result["config"] = cfg.verification.model_dump(mode="json")
    result["wall_s"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "pipeline.json", to_jsonable(result))
    rows = [flatten_scores(s) for s in result["localization"]]
    lc = result.get("loop_closures")
    text = (f"# Verified pipeline ({args.world.name}; map {args.map_run}, {build['keyframes']} keyframes, "
            f"{result['map_bytes_per_keyframe'] / 1e3:.1f} kB per keyframe of which views "
            f"{result['view_bytes_per_keyframe'] / 1e3:.1f} kB)\n\n"
            + markdown_table(rows, TABLE_KEYS) + "\n")
    if lc is not None:
        text += ("\nLoop closures (" + lc["run"] + " appended): teacher top-1 "
                 f"LiDAR-verified {lc['teacher_top1_verified']}; emitted by the builder {lc['emitted']}; "
                 f"keyframes that could close {lc['keyframes_that_could_close']}.\n")
    (args.out / "pipeline.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
