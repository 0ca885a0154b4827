"""Verified localisation per condition on the default world's test region, as the demo runs it: a day map, camera
queries of every other condition driving the same direction, the demo's student (ONNX, one thread).

Maps: ``--map RUN=FOLDER`` for each day run used (run01_day for the direction -1 runs night / rain / winter; run00_day
for the +1 runs dusk / fog / autumn; day itself has no second run in either direction). A missing one is built
from the run's test-region frames with ``--teacher`` / ``--student`` (views and calibration stored; loop closures
are not verified there, they are not what is measured). Each query run goes through
:func:`~distilvpr_ros.pipeline.offline.localize_sequence` with verification on (node defaults): precision and
recall before (descriptor matcher) and after verification, pose error, latency (wall, this machine's load) and
CPU time per frame (mean, p50, p99: what the load does not inflate), the keyframes' preparation time at load.

    .venv/bin/python benchmarks/verified_conditions.py --world data/world_default \\
        --student-onnx results/demo/work_default/export/student.onnx \\
        --map run01_day=results/demo/work_default/map/map \\
        --teacher results/demo/work_default/teacher/best --student results/demo/work_default/student/best

Frame-to-frame motion (``rerank.consecutive`` > 1, tracking with ``--rerank tracking_min_inliers=N``) comes from
drifting odometry by default (``--odometry drift``: the world generator's wheel-odometry model, seeded per query run),
``--odometry exact`` takes the ground-truth motion.

``--camera KEY=VALUE`` overrides a camera verification setting (e.g. ``--camera features=cnn --camera
cnn_head=results/verification/cnn_head.safetensors --camera ratio=0.9 --camera ratio_exclusion_px=10``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from distilvpr_ros.data.synthetic import load_synthetic  # noqa: E402
from distilvpr_ros.data.world.config import OdometryDriftConfig  # noqa: E402
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable  # noqa: E402
from distilvpr_ros.evaluation.verified_matches import flatten_scores  # noqa: E402
from distilvpr_ros.pipeline.calibration import world_calibration  # noqa: E402
from distilvpr_ros.pipeline.config import NodeConfig  # noqa: E402
from distilvpr_ros.pipeline.embedder import Embedder  # noqa: E402
from distilvpr_ros.pipeline.localizer import Localizer  # noqa: E402
from distilvpr_ros.pipeline.offline import build_map_from_sequence, localize_sequence  # noqa: E402
from distilvpr_ros.utils.results import write_json  # noqa: E402
from distilvpr_ros.verification import CameraVerificationConfig, RerankConfig  # noqa: E402

MAP_OF = {"run03_night": "run01_day", "run05_rain": "run01_day", "run07_winter": "run01_day",
          "run02_dusk": "run00_day", "run04_fog": "run00_day", "run06_autumn": "run00_day"}
COLUMNS = ("condition", "map_run", "queries_with_match", "recall@1.before", "before.accepted", "before.precision",
           "before.recall", "after.accepted", "after.wrong", "after.precision", "after.recall",
           "after.metric_precision", "tracked", "pose_error.translation_m_median", "pose_error.translation_m_p90",
           "pose_error.rotation_deg_median", "pose_error.rotation_deg_p90", "latency_ms_p50", "latency_ms_p99",
           "cpu_ms_per_frame", "cpu_ms_p50", "cpu_ms_p99", "preload_s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--region", default="test")
    p.add_argument("--student-onnx", type=Path, required=True)
    p.add_argument("--map", action="append", default=[], help="RUN=FOLDER: an existing map of that day run")
    p.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (to build a missing map)")
    p.add_argument("--student", type=Path, default=None, help="student checkpoint (to build a missing map)")
    p.add_argument("--queries", nargs="*", default=list(MAP_OF))
    p.add_argument("--work", type=Path, default=Path("results/verified_conditions"))
    p.add_argument("--out", type=Path, default=Path("docs/results/verification"))
    p.add_argument("--name", default="conditions", help="output file name (json / md)")
    p.add_argument("--camera", action="append", default=[], metavar="KEY=VALUE",
                   help="override a verification.camera setting (VALUE parsed as YAML), e.g. features=cnn")
    p.add_argument("--rerank", action="append", default=[], metavar="KEY=VALUE",
                   help="override a verification.rerank setting, e.g. consecutive=2 or tracking_min_inliers=8")
    p.add_argument("--odometry", choices=("drift", "exact"), default="drift",
                   help="frame-to-frame motion: drifting wheel odometry (default) or the ground truth")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)  # the CNN descriptors' trunk
    t0, load = time.time(), list(os.getloadavg())
    runs = {r.run: r for r in load_synthetic(args.world, {args.region})}
    maps = dict(m.split("=", 1) for m in args.map)
    cfg = NodeConfig()
    for run in sorted({MAP_OF[q] for q in args.queries} - set(maps)):
        if args.teacher is None or args.student is None:
            raise SystemExit(f"no map of {run}: give --map {run}=FOLDER or --teacher and --student to build one")
        build = cfg.model_copy(deep=True)
        build.map.resume = False
        build.verification.enabled = False
        maps[run] = str(args.work / f"map_{run}")
        build_map_from_sequence(runs[run], args.teacher, args.student, Path(maps[run]), build)
    student = Embedder.from_onnx(args.student_onnx, num_threads=1)
    vcfg = cfg.verification.model_copy(update={"enabled": True})
    if args.camera:
        over = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in args.camera)}
        vcfg.camera = CameraVerificationConfig(**{**vcfg.camera.model_dump(), **over})
    if args.rerank:
        over = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in args.rerank)}
        vcfg.rerank = RerankConfig(**{**vcfg.rerank.model_dump(), **over})
    rows, scores = [], {}
    for q in args.queries:
        loc = Localizer.load(student, maps[MAP_OF[q]], cfg.matcher, q, cfg.image_quality, vcfg,
                             world_calibration(args.world))
        cpu_ms, localize = [], loc.localize

        def timed(*a, **k):  # CPU time of each frame (this process; one thread): what the load does not inflate
            c = time.process_time()
            try:
                return localize(*a, **k)
            finally:
                cpu_ms.append((time.process_time() - c) * 1e3)

        loc.localize = timed
        s = localize_sequence(loc, runs[q], odometry_drift=OdometryDriftConfig() if args.odometry == "drift" else None,
                              drift_seed=sorted(MAP_OF).index(q))
        s.update(condition=runs[q].info["condition"]["name"], map_run=MAP_OF[q],
                 cpu_ms_per_frame=float(np.mean(cpu_ms)), cpu_ms_p50=float(np.percentile(cpu_ms, 50)),
                 cpu_ms_p99=float(np.percentile(cpu_ms, 99)), preload_s=float(getattr(loc, "preload_seconds", 0.0)))
        scores[q] = s
        rows.append(flatten_scores(s))
        print({k: rows[-1].get(k) for k in COLUMNS}, s["rejections"], flush=True)
    result = {"world": str(args.world), "region": args.region, "maps": maps, "config": vcfg.model_dump(mode="json"),
              "runs": scores, "load_average_before": load, "load_average_after": list(os.getloadavg()),
              "wall_s": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", to_jsonable(result))
    text = (f"# Verified localisation per condition ({args.world.name}, {args.region} region; day maps, "
            f"ONNX student, one thread)\n\n" + markdown_table(rows, COLUMNS)
            + f"\n\nLoad average {load[0]:.1f} before on 2 cores (wall latencies are inflated by it; CPU ms per "
            f"frame is not); {result['wall_s']:.0f} s.\n")
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
