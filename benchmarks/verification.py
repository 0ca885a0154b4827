"""Geometric verification on the synthetic world: SIFT vs ORB and poselib vs OpenCV PnP (camera), small_gicp vs
open3d GICP (LiDAR).

What is measured. The map is the world's first run; queries are frames of the other runs (every condition).
Each query frame is paired with its *positive* — the nearest map frame within ``--positive-m`` (5 m) whose
heading differs by less than 30 degrees — and with ``--negatives`` random map frames more than 50 m away.

* Camera: each pair is verified (query image against the map frame's image and sparse LiDAR depth) with
  every features x PnP backend combination. An acceptance is *correct* when the pair is a positive and the
  recovered base pose is within 1 m and 5 degrees of the truth; every other acceptance is a false one.
  precision = correct / accepted, recall = correct / positives, pose errors on accepted positives. Time: per
  image feature extraction (median) and per pair matching + depth + PnP + covariance (median, p90), all on
  one thread; ``ms_per_verification`` = 2 extractions + one pair (nothing cached).
  ``precision_per_ms`` = precision / ms_per_verification decides the features (issue 13).
* LiDAR: the query scan is registered to the map frame's scan, seeded with the true relative yaw plus
  N(0, 5 deg) noise (a descriptor's yaw estimate) and zero translation. success = accepted and within
  0.2 m / 1 degree of the true relative transform; false accepts on negatives. ``success_per_ms`` =
  success rate on positives / median time decides the backend.

World: ``--world`` when it holds a generated world, else a small one is generated into ``--assets``
(the default town and sensors, 320x240 + 32x1024, four partial loops from the same start: day map,
and day lane 1, night and rain queries). Writes ``verification.json`` and ``verification.md`` into ``--out``.

    .venv/bin/python benchmarks/verification.py                     # ~5 min on 2 loaded cores
    .venv/bin/python benchmarks/verification.py --queries 10        # smoke run
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # open3d's registration: one thread, like small_gicp here

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402
from tqdm import tqdm  # noqa: E402

from distilvpr_ros.data.geometry import invert, yaw_of  # noqa: E402
from distilvpr_ros.data.synthetic import load_synthetic, read_world_meta  # noqa: E402
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable  # noqa: E402
from distilvpr_ros.utils.results import write_json  # noqa: E402
from distilvpr_ros.verification import (CameraCalibration, CameraVerificationConfig, CameraVerifier,  # noqa: E402
                                        KeyframeView, LidarVerificationConfig, LidarVerifier)
from distilvpr_ros.verification.depth import sparse_depth  # noqa: E402

CORRECT_M, CORRECT_DEG = 1.0, 5.0  # a camera acceptance is correct within these of the true pose
LIDAR_OK_M, LIDAR_OK_DEG = 0.2, 1.0  # a registration succeeds within these of the true transform
NEGATIVE_M = 50.0


def benchmark_world_config():
    """Default town and sensors; four partial loops from one start (day map; day lane 1, night, rain)."""
    from distilvpr_ros.data.world.config import PRESETS, WorldConfig

    data = PRESETS["default"].model_dump(mode="json")
    run = dict(direction=1, laps=0.35, start_offset_m=0.0)
    data["runs"] = [
        dict(run, name="map_day", lane=0, day=0, condition={"time_of_day": "day"}),
        dict(run, name="day_lane1", lane=1, day=1, condition={"time_of_day": "day"}),
        dict(run, name="night", lane=0, day=6, condition={"time_of_day": "night"}),
        dict(run, name="rain", lane=1, day=13, condition={"time_of_day": "day", "weather": "rain"}),
    ]
    return WorldConfig.model_validate(data)


def world_folder(world: Path | None, assets: Path) -> Path:
    if world is not None and (world / "world.json").is_file():
        return world
    from distilvpr_ros.data.world.generate import generate_world

    out = assets / "world_verification"
    if not (out / "world.json").is_file():
        print(f"generating the benchmark world into {out}")
        generate_world(out, benchmark_world_config(), write_bags=False, progress=True)
    return out


def pose_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return (float(np.linalg.norm(a[:3, 3] - b[:3, 3])),
            float(np.degrees(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude())))


def heading_diff_deg(a: np.ndarray, b: np.ndarray) -> float:
    d = yaw_of(a) - yaw_of(b)
    return float(abs(np.degrees(np.arctan2(np.sin(d), np.cos(d)))))


def make_pairs(map_run, query_runs, n_queries: int, n_neg: int, positive_m: float, rng) -> list[dict]:
    """(query run, query index, map index, positive?) for ``n_queries`` query frames spread over the runs."""
    map_xy = map_run.poses[:, :2, 3]
    candidates = []
    for run in query_runs:
        for i in range(len(run)):
            d = np.linalg.norm(map_xy - run.poses[i, :2, 3], axis=1)
            j = int(np.argmin(d))
            if d[j] <= positive_m and heading_diff_deg(run.poses[i], map_run.poses[j]) < 30:
                candidates.append((run, i, j, d))
    picks = rng.choice(len(candidates), size=min(n_queries, len(candidates)), replace=False)
    pairs = []
    for k in sorted(picks):
        run, i, j, d = candidates[k]
        pairs.append(dict(run=run, qi=i, mi=j, positive=True, distance_m=float(d[j])))
        far = np.flatnonzero(d > NEGATIVE_M)
        for m in rng.choice(far, size=min(n_neg, len(far)), replace=False):
            pairs.append(dict(run=run, qi=i, mi=int(m), positive=False, distance_m=float(d[m])))
    return pairs


def percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


# -- camera ---------------------------------------------------------------------------------------


def camera_variants(backends: list[str]) -> dict[str, CameraVerificationConfig]:
    """Features x PnP backend at the defaults, then single-knob variations (feature count, road filter, upright)."""
    out = {f"{kind}+{b}": CameraVerificationConfig(features=kind, pnp_backend=b)
           for kind in ("sift", "orb") for b in backends}
    b = backends[0]
    for kind in ("sift", "orb"):
        for n in (500, 1000, 2000):
            out[f"{kind}+{b} max_features={n}"] = CameraVerificationConfig(
                features=kind, pnp_backend=b, max_features=n)
        out[f"{kind}+{b} road kept"] = CameraVerificationConfig(features=kind, pnp_backend=b, drop_low_points=False)
        out[f"{kind}+{b} rotation-invariant"] = CameraVerificationConfig(features=kind, pnp_backend=b, upright=False)
    # Identical configs (a variation equal to the default) are measured once.
    seen, unique = set(), {}
    for name, cfg in out.items():
        key = cfg.model_dump_json()
        if key not in seen:
            seen.add(key)
            unique[name] = cfg
    return unique


def camera_benchmark(pairs, map_run, calib: CameraCalibration, variants: dict[str, CameraVerificationConfig]) -> dict:
    images: dict[tuple[str, int], np.ndarray] = {}
    depth: dict[int, np.ndarray] = {}
    for p in pairs:
        images.setdefault((p["run"].run, p["qi"]), p["run"].image(p["qi"]))
        images.setdefault((map_run.run, p["mi"]), map_run.image(p["mi"]))
        if p["mi"] not in depth:
            depth[p["mi"]] = sparse_depth(map_run.cloud(p["mi"]), calib)
    features: dict[tuple, tuple[dict, list]] = {}  # extractor key -> (features, extract ms)
    out = {}
    for name, cfg in variants.items():
        v = CameraVerifier(cfg)
        fkey = v.extractor.key  # what the features depend on (kind, count, upright)
        if fkey not in features:
            feats, extract_ms = {}, []
            for key, img in tqdm(images.items(), desc=f"{fkey} features", leave=False):
                t = time.perf_counter()
                feats[key] = v.extractor.extract(img)
                extract_ms.append((time.perf_counter() - t) * 1e3)
            features[fkey] = (feats, extract_ms)
        feats, extract_ms = features[fkey]
        rows = []
        for p in tqdm(pairs, desc=f"camera {name}", leave=False):
            kf = KeyframeView(map_run.poses[p["mi"]], calib, images[(map_run.run, p["mi"])], depth[p["mi"]],
                              feats[(map_run.run, p["mi"])])
            r = v.verify(feats[(p["run"].run, p["qi"])], kf)
            truth = p["run"].poses[p["qi"]]
            dt, dr = pose_error(r.pose, truth) if r.pose is not None else (None, None)
            correct = bool(r.accepted and p["positive"] and dt <= CORRECT_M and dr <= CORRECT_DEG)
            rows.append(dict(condition=p["run"].meta(p["qi"])["condition"], positive=p["positive"],
                             accepted=r.accepted, correct=correct, inliers=r.inliers, matches=r.matches,
                             correspondences=r.correspondences, reproj=r.reprojection_error_px, dt=dt, dr=dr,
                             ms=r.timings_ms["total"], reason=r.reason))
        out[name] = dict(variant=name, **summarize_camera(rows, extract_ms, cfg))
    return out


def summarize_camera(rows, extract_ms, cfg: CameraVerificationConfig) -> dict:
    pos = [r for r in rows if r["positive"]]
    neg = [r for r in rows if not r["positive"]]
    acc = [r for r in rows if r["accepted"]]
    correct = [r for r in rows if r["correct"]]
    acc_pos = [r for r in pos if r["accepted"]]
    precision = len(correct) / len(acc) if acc else None
    pair_ms = [r["ms"] for r in rows]
    ms_per_verification = 2 * float(np.median(extract_ms)) + float(np.median(pair_ms))
    by_condition = {}
    for c in sorted({r["condition"] for r in pos}):
        cp = [r for r in pos if r["condition"] == c]
        by_condition[c] = dict(positives=len(cp), recall=sum(r["correct"] for r in cp) / len(cp),
                               inliers_median=percentile([r["inliers"] for r in cp], 50))
    reasons: dict[str, int] = {}
    for r in pos:
        if not r["accepted"]:
            key = r["reason"].split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
    return dict(
        features=cfg.features, pnp_backend=cfg.pnp_backend, max_features=cfg.max_features,
        min_point_height_m=cfg.min_point_height_m if cfg.drop_low_points else None, positives=len(pos),
        negatives=len(neg), accepted=len(acc),
        correct=len(correct), false_accepts=len(acc) - len(correct),
        false_accepts_on_negatives=sum(r["accepted"] for r in neg),
        precision=precision, recall=len(correct) / len(pos) if pos else None,
        translation_error_m_median=percentile([r["dt"] for r in acc_pos], 50),
        translation_error_m_p90=percentile([r["dt"] for r in acc_pos], 90),
        rotation_error_deg_median=percentile([r["dr"] for r in acc_pos], 50),
        rotation_error_deg_p90=percentile([r["dr"] for r in acc_pos], 90),
        inliers_positive_median=percentile([r["inliers"] for r in pos], 50),
        matches_positive_median=percentile([r["matches"] for r in pos], 50),
        correspondences_positive_median=percentile([r["correspondences"] for r in pos], 50),
        inliers_negative_max=max((r["inliers"] for r in neg), default=0),
        reprojection_px_median=percentile([r["reproj"] for r in acc], 50),
        extract_ms_median=float(np.median(extract_ms)), pair_ms_median=float(np.median(pair_ms)),
        pair_ms_p90=percentile(pair_ms, 90), ms_per_verification=ms_per_verification,
        precision_per_ms=(precision / ms_per_verification) if precision is not None else 0.0,
        recall_by_condition=by_condition, rejections_of_positives=reasons,
    )


# -- LiDAR ----------------------------------------------------------------------------------------


def lidar_benchmark(pairs, map_run, calib: CameraCalibration, backends: list[str], rng) -> dict:
    T_bl = calib.T_base_lidar
    clouds: dict[tuple[str, int], np.ndarray] = {}
    for p in pairs:
        clouds.setdefault((p["run"].run, p["qi"]), p["run"].cloud(p["qi"]))
        clouds.setdefault((map_run.run, p["mi"]), map_run.cloud(p["mi"]))
    yaw_noise = rng.normal(0, np.radians(5), len(pairs))
    out = {}
    for backend in backends:
        v = LidarVerifier(LidarVerificationConfig(backend=backend))
        rows = []
        for p, noise in tqdm(list(zip(pairs, yaw_noise)), desc=f"lidar {backend}", leave=False):
            truth = invert(map_run.poses[p["mi"]] @ T_bl) @ (p["run"].poses[p["qi"]] @ T_bl)
            r = v.register(clouds[(p["run"].run, p["qi"])], clouds[(map_run.run, p["mi"])], yaw=yaw_of(truth) + noise)
            dt, dr = pose_error(r.transform, truth) if r.transform is not None else (None, None)
            ok = bool(r.accepted and p["positive"] and dt <= LIDAR_OK_M and dr <= LIDAR_OK_DEG)
            rows.append(dict(positive=p["positive"], accepted=r.accepted, ok=ok, dt=dt, dr=dr, fitness=r.fitness,
                             inlier_ratio=r.inlier_ratio, constraint=r.constraint, ms=r.timings_ms["total"],
                             align_ms=r.timings_ms.get("align"), reason=r.reason,
                             near=bool(dt is not None and dt <= LIDAR_OK_M and dr <= LIDAR_OK_DEG)))
        pos = [r for r in rows if r["positive"]]
        neg = [r for r in rows if not r["positive"]]
        acc = [r for r in rows if r["accepted"]]
        ms = [r["ms"] for r in rows]
        success = sum(r["ok"] for r in pos) / len(pos) if pos else 0.0
        out[backend] = dict(
            backend=backend, positives=len(pos), negatives=len(neg), accepted=len(acc),
            success_rate=success, precision=(sum(r["ok"] for r in acc) / len(acc)) if acc else None,
            false_accepts_on_negatives=sum(r["accepted"] for r in neg),
            converged_near_truth=sum(r["near"] for r in pos) / len(pos) if pos else None,
            translation_error_m_median=percentile([r["dt"] for r in pos if r["dt"] is not None], 50),
            translation_error_m_p90=percentile([r["dt"] for r in pos if r["dt"] is not None], 90),
            rotation_error_deg_median=percentile([r["dr"] for r in pos if r["dr"] is not None], 50),
            inlier_ratio_positive_p10=percentile([r["inlier_ratio"] for r in pos if r["near"]], 10),
            inlier_ratio_negative_max=max((r["inlier_ratio"] for r in neg), default=None),
            fitness_positive_p90=percentile([r["fitness"] for r in pos if r["near"]], 90),
            fitness_negative_min=min((r["fitness"] for r in neg), default=None),
            constraint_positive_p10=percentile([r["constraint"] for r in pos if r["near"]], 10),
            ms_median=percentile(ms, 50), ms_p90=percentile(ms, 90),
            align_ms_median=percentile([r["align_ms"] for r in rows if r["align_ms"] is not None], 50),
            success_per_ms=success / float(np.median(ms)),
            rejections_of_positives={k: sum(1 for r in pos if not r["accepted"] and r["reason"].startswith(k))
                                     for k in ("too little overlap", "poor fit", "degenerate", "too few points",
                                               "registration")},
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=None, help="a generated world (default: generate a small one)")
    p.add_argument("--assets", type=Path, default=Path("data/benchmarks"), help="where the world is generated")
    p.add_argument("--queries", type=int, default=90, help="query frames (each: 1 positive + negatives)")
    p.add_argument("--negatives", type=int, default=2, help="far-away map frames per query")
    p.add_argument("--lidar-queries", type=int, default=60, help="query frames for the LiDAR part")
    p.add_argument("--positive-m", type=float, default=5.0, help="a positive map frame is within this (m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/results/verification"))
    args = p.parse_args()
    cv2.setNumThreads(1)
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    world = world_folder(args.world, args.assets)
    calib = CameraCalibration.from_world_meta(read_world_meta(world))
    runs = load_synthetic(world)
    map_run, query_runs = runs[0], runs[1:]
    rng = np.random.default_rng(args.seed)
    pairs = make_pairs(map_run, query_runs, args.queries, args.negatives, args.positive_m, rng)
    print(f"world {world}: map {map_run.run} ({len(map_run)} frames), {len(pairs)} camera pairs")

    from distilvpr_ros.verification.pnp import poselib

    backends = ["poselib", "opencv"] if poselib is not None else ["opencv"]
    camera = camera_benchmark(pairs, map_run, calib, camera_variants(backends))
    lidar_pairs = make_pairs(map_run, query_runs, args.lidar_queries, 1, args.positive_m, rng)
    lidar = lidar_benchmark(lidar_pairs, map_run, calib, ["small_gicp", "open3d"], rng)

    # Features and PnP backend are chosen among the default-setting combinations.
    best_camera = max((camera[f"{k}+{b}"] for k in ("sift", "orb") for b in backends),
                      key=lambda r: (r["precision_per_ms"], r["recall"] or 0))
    best_lidar = max(lidar.values(), key=lambda r: r["success_per_ms"])
    result = dict(
        world=str(world), map_run=map_run.run, query_runs=[r.run for r in query_runs],
        camera_pairs=len(pairs), lidar_pairs=len(lidar_pairs),
        protocol=dict(positive_m=args.positive_m, negative_m=NEGATIVE_M, correct_m=CORRECT_M, correct_deg=CORRECT_DEG,
                      lidar_ok_m=LIDAR_OK_M, lidar_ok_deg=LIDAR_OK_DEG, lidar_yaw_seed_noise_deg=5.0,
                      threads=1, seed=args.seed),
        camera_config=CameraVerificationConfig().model_dump(mode="json"),
        lidar_config=LidarVerificationConfig().model_dump(mode="json"),
        camera=camera, lidar=lidar,
        choice=dict(camera=f"{best_camera['features']}+{best_camera['pnp_backend']}",
                    camera_rule="max precision_per_ms (ties: recall)",
                    lidar=best_lidar["backend"], lidar_rule="max success_per_ms"),
        machine=dict(cpu_count=os.cpu_count(), load_average_before=load_before, machine=platform.machine(),
                     opencv=cv2.__version__),
        wall_s=time.perf_counter() - t_start,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "verification.json", to_jsonable(result))
    cam_cols = {"variant": "variant", "precision": "precision", "recall": "recall",
                "false_accepts": "false acc.", "translation_error_m_median": "t err med (m)",
                "rotation_error_deg_median": "r err med (deg)", "inliers_positive_median": "inliers pos (med)",
                "correspondences_positive_median": "2D-3D pos (med)", "inliers_negative_max": "inliers neg (max)",
                "extract_ms_median": "extract ms",
                "pair_ms_median": "pair ms", "ms_per_verification": "ms/verif.", "precision_per_ms": "prec./ms"}
    lid_cols = {"backend": "backend", "success_rate": "success", "precision": "precision",
                "false_accepts_on_negatives": "false acc. (neg)", "translation_error_m_median": "t err med (m)",
                "rotation_error_deg_median": "r err med (deg)", "constraint_positive_p10": "constraint p10",
                "ms_median": "ms med", "ms_p90": "ms p90", "success_per_ms": "success/ms"}
    md = [f"# Verification benchmark ({world.name}; map {map_run.run})", "",
          f"Camera: {len(pairs)} pairs; LiDAR: {len(lidar_pairs)} pairs; one thread; load before "
          f"{load_before[0]:.1f} on {os.cpu_count()} cores; {result['wall_s']:.0f} s.", "",
          markdown_table(list(camera.values()), cam_cols, fmt={"precision_per_ms": ".4f"}), "",
          markdown_table(list(lidar.values()), lid_cols, fmt={"success_per_ms": ".4f"}), "",
          f"Choice: camera **{result['choice']['camera']}**, LiDAR **{result['choice']['lidar']}**.", ""]
    (args.out / "verification.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
