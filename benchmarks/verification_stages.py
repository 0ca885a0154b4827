"""Where camera verification loses a true place match, stage by stage, per condition (default world).

Map: every test-region frame of a day run, stored as a map stores it (JPEG q90, LiDAR points voxel-downsampled to
0.3 m, float16). Queries: every ``--step``-th test-region frame of the other conditions' runs, each paired with
its *positive* (the nearest map frame within 5 m with a heading within 30 degrees: run01_day for the direction -1
runs night / rain / winter, run00_day for the +1 runs dusk / fog / autumn) and with ``--negatives`` map frames more
than 50 m away. Each pair is verified with :class:`~distilvpr_ros.verification.camera.CameraVerifier`; the
ground-truth relative pose also tells which keypoints and matches are right:

* ``kf_3d``: keyframe features with a LiDAR 3D point (what can become a correspondence);
* ``visible``: of those, the ones the query camera sees (ground truth); ``repeatable``: with a query keypoint
  within 3 px of their true position;
* ``true_nn``: repeatable ones whose nearest query descriptor is that keypoint (the descriptor recognises it);
* ``matches``: mutual-NN + ratio matches; ``correct``: of those, within 4 px of the true position;
* ``inliers``: PnP inliers (median, ``inliers_p25`` the lower quartile); ``accepted`` / ``recall`` (accepted with
  the pose within 1 m and 5 deg) per pair; ``false_accepts``: negatives accepted; ``neg_inliers_max``: the most PnP
  inliers of a negative (what ``min_inliers`` must stay above); ``t_err_median`` / ``r_err_median``: pose error
  (m / deg) of the accepted positives.

Medians over the pairs. One thread.

    .venv/bin/python benchmarks/verification_stages.py --world data/world_default

Variants select on ``--region val`` and report on ``test``; the ``cnn head`` variants need a head trained on the
train region (``python -m distilvpr_ros.verification.cnn_head_training``, ``--cnn-head``).
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
from scipy.spatial import cKDTree  # noqa: E402

from distilvpr_ros.data.geometry import invert, transform_points, yaw_of  # noqa: E402
from distilvpr_ros.data.synthetic import load_synthetic  # noqa: E402
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable  # noqa: E402
from distilvpr_ros.mapping.views import decode_jpeg  # noqa: E402
from distilvpr_ros.pipeline.calibration import world_calibration  # noqa: E402
from distilvpr_ros.pipeline.views import make_view  # noqa: E402
from distilvpr_ros.utils.results import write_json  # noqa: E402
from distilvpr_ros.verification import CameraVerificationConfig, CameraVerifier, KeyframeView  # noqa: E402
from distilvpr_ros.verification.features import match_features  # noqa: E402

PAIRS = {"run03_night": "run01_day", "run05_rain": "run01_day", "run07_winter": "run01_day",
         "run02_dusk": "run00_day", "run04_fog": "run00_day", "run06_autumn": "run00_day"}
#: Variants (``{head}``: the ``--cnn-head`` file, from ``python -m distilvpr_ros.verification.cnn_head_training``).
VARIANTS = {"orb rotation-invariant (before)": dict(features="orb", upright=False),
            "orb upright (default)": dict(features="orb", upright=True),
            "orb upright 2000": dict(features="orb", upright=True, max_features=2000),
            "sift upright": dict(features="sift", upright=True),
            "orb upright clahe": dict(features="orb", upright=True, photometric="clahe"),
            "sift upright clahe": dict(features="sift", upright=True, photometric="clahe"),
            "orb upright median": dict(features="orb", upright=True, photometric="median"),
            "cnn raw s3+4": dict(features="cnn", cnn_stages=(3, 4)),
            "cnn raw s2+3+4": dict(features="cnn", cnn_stages=(2, 3, 4)),
            "cnn raw s3+4+5": dict(features="cnn", cnn_stages=(3, 4, 5)),
            "cnn head mutual": dict(features="cnn", cnn_head="{head}", ratio=1.0),
            "cnn head ratio 0.95 excl 10": dict(features="cnn", cnn_head="{head}", ratio=0.95, ratio_exclusion_px=10),
            "cnn head ratio 0.9 excl 10": dict(features="cnn", cnn_head="{head}", ratio=0.9, ratio_exclusion_px=10),
            "cnn head ratio 0.9 excl 10 median": dict(features="cnn", cnn_head="{head}", ratio=0.9,
                                                      ratio_exclusion_px=10, photometric="median"),
            "cnn head ratio 0.8 excl 10": dict(features="cnn", cnn_head="{head}", ratio=0.8, ratio_exclusion_px=10),
            "cnn head 2000 mutual": dict(features="cnn", cnn_head="{head}", ratio=1.0, max_features=2000),
            "cnn head 2000 ratio 0.95 excl 10": dict(features="cnn", cnn_head="{head}", ratio=0.95,
                                                     ratio_exclusion_px=10, max_features=2000),
            "cnn head 2000 ratio 0.9 excl 10": dict(features="cnn", cnn_head="{head}", ratio=0.9,
                                                    ratio_exclusion_px=10, max_features=2000),
            "cnn head 2000 ratio 0.95 excl 10 reproj 3": dict(features="cnn", cnn_head="{head}", ratio=0.95,
                                                              ratio_exclusion_px=10, max_features=2000,
                                                              max_reprojection_px=3.0)}
COLUMNS = ("variant", "condition", "pairs", "query_features", "kf_features", "kf_3d", "visible", "repeatable",
           "true_nn", "matches", "correct", "inliers", "inliers_p25", "accepted", "recall", "false_accepts",
           "negatives", "neg_inliers_max", "t_err_median", "r_err_median", "ms_per_pair")


def keyframes(run, calib) -> list[KeyframeView]:
    out = []
    for i in range(len(run)):
        s = run[i]
        view = make_view(s.image, s.cloud)  # as a map stores it
        pts = view.points.astype(np.float16).astype(np.float64)
        out.append(KeyframeView.from_cloud(s.pose, calib, decode_jpeg(view.image_jpeg), pts))
    return out


def measure(verifier: CameraVerifier, query_run, map_run, kfs, calib, step: int, negatives: int, rng) -> dict:
    cfg = verifier.config
    rows, neg_acc, n_neg, ms, neg_inl = [], 0, 0, [], []
    map_xy = map_run.poses[:, :2, 3]
    map_yaw = np.array([yaw_of(p) for p in map_run.poses])
    for i in range(0, len(query_run), step):
        qp = query_run.poses[i]
        d = np.linalg.norm(map_xy - qp[:2, 3], axis=1)
        dyaw = np.abs((np.degrees(map_yaw - yaw_of(qp)) + 180) % 360 - 180)
        d_same = np.where(dyaw < 30, d, np.inf)
        j = int(np.argmin(d_same))
        if d_same[j] > 5:
            continue
        kf = kfs[j]
        verifier.prepare(kf)
        t = time.perf_counter()
        q = verifier.features(query_run.image(i))
        r = verifier.verify(q, kf)
        ms.append((time.perf_counter() - t) * 1e3)
        row = dict(query_features=len(q), kf_features=kf.detected, kf_3d=len(kf.features), visible=0, repeatable=0,
                   true_nn=0, matches=r.matches, correct=0, inliers=r.inliers, accepted=r.accepted, ok=False)
        if r.accepted:
            row["t_err"] = float(np.linalg.norm(r.pose[:3, 3] - qp[:3, 3]))
            cos = (np.trace(r.pose[:3, :3].T @ qp[:3, :3]) - 1) / 2
            row["r_err"] = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
            row["ok"] = row["t_err"] <= 1.0 and row["r_err"] <= 5.0
        if len(kf.features) and len(q):
            T = invert(qp @ calib.T_base_camera) @ kf.pose @ calib.T_base_camera  # keyframe camera -> query camera
            uv, inside = calib.project(transform_points(T, kf.points), 0.5)
            uv = np.where(np.isfinite(uv), uv, -1e6)
            dist, nearest = cKDTree(q.uv).query(uv)
            rep = inside & (dist < 3)
            row.update(visible=int(inside.sum()), repeatable=int(rep.sum()))
            if rep.any():
                norm = cv2.NORM_HAMMING if q.kind == "orb" else cv2.NORM_L2
                nn = cv2.BFMatcher(norm).match(kf.features.descriptors, q.descriptors)
                best = np.full(len(kf.features), -1)
                for m in nn:
                    best[m.queryIdx] = m.trainIdx
                row["true_nn"] = int((rep & (best == nearest)).sum())
            pairs = match_features(q, kf.features, cfg.ratio, cfg.ratio_exclusion_px)
            if len(pairs):
                err = np.linalg.norm(uv[pairs[:, 1]] - q.uv[pairs[:, 0]], axis=1)
                row["correct"] = int(((err < 4) & inside[pairs[:, 1]]).sum())
        rows.append(row)
        far = np.flatnonzero(d > 50)
        for jn in rng.choice(far, size=min(negatives, len(far)), replace=False):
            n_neg += 1
            rn = verifier.verify(q, kfs[jn])
            neg_acc += rn.accepted
            neg_inl.append(rn.inliers)
    med = {k: float(np.median([r[k] for r in rows])) if rows else float("nan")
           for k in ("query_features", "kf_features", "kf_3d", "visible", "repeatable", "true_nn", "matches",
                     "correct", "inliers")}
    n = len(rows)
    return dict(pairs=n, **med, accepted=sum(r["accepted"] for r in rows) / max(n, 1),
                recall=sum(r["ok"] for r in rows) / max(n, 1), false_accepts=neg_acc, negatives=n_neg,
                neg_inliers_max=int(max(neg_inl, default=0)),
                t_err_median=float(np.median([r["t_err"] for r in rows if "t_err" in r] or [np.nan])),
                r_err_median=float(np.median([r["r_err"] for r in rows if "r_err" in r] or [np.nan])),
                inliers_p25=float(np.percentile([r["inliers"] for r in rows], 25)) if rows else float("nan"),
                ms_per_pair=float(np.median(ms)) if ms else float("nan"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--region", default="test")
    p.add_argument("--step", type=int, default=3, help="every n-th query frame")
    p.add_argument("--negatives", type=int, default=2, help="far map frames verified per query")
    p.add_argument("--conditions", nargs="*", default=list(PAIRS), help="query runs")
    p.add_argument("--variants", nargs="*", default=None,
                   help="default: all (those of a 'cnn head' only when --cnn-head exists)")
    p.add_argument("--cnn-head", default="results/verification/cnn_head.safetensors",
                   help="CNN descriptor head of the 'cnn head' variants")
    p.add_argument("--name", default="stages", help="output file name (json / md)")
    p.add_argument("--out", type=Path, default=Path("docs/results/verification"))
    args = p.parse_args(argv)
    if args.variants is None:
        args.variants = [v for v in VARIANTS if "{head}" not in VARIANTS[v].values() or Path(args.cnn_head).is_file()]
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    t0, load = time.time(), list(os.getloadavg())
    calib = world_calibration(args.world)
    runs = {r.run: r for r in load_synthetic(args.world, {args.region})}
    kfs = {m: keyframes(runs[m], calib) for m in sorted({PAIRS[c] for c in args.conditions})}
    rows = []
    for name in args.variants:
        settings = {k: v.format(head=args.cnn_head) if isinstance(v, str) else v for k, v in VARIANTS[name].items()}
        verifier = CameraVerifier(CameraVerificationConfig(**settings))
        for cond in args.conditions:
            m = PAIRS[cond]
            row = dict(variant=name, condition=runs[cond].info["condition"]["name"], query_run=cond, map_run=m,
                       **measure(verifier, runs[cond], runs[m], kfs[m], calib, args.step, args.negatives,
                                 np.random.default_rng(0)))
            rows.append(row)
            print({k: row[k] for k in COLUMNS}, flush=True)
    result = {"world": str(args.world), "region": args.region, "step": args.step, "cnn_head": args.cnn_head,
              "rows": rows,
              "load_average_before": load, "load_average_after": list(os.getloadavg()), "wall_s": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", to_jsonable(result))
    text = (f"# Camera verification stage by stage ({args.world.name}, {args.region} region; medians per pair)\n\n"
            + markdown_table(rows, COLUMNS) + f"\n\nLoad average {load[0]:.1f} before, on 2 cores; "
            f"{result['wall_s']:.0f} s.\n")
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
