"""Cross-run LiDAR loop closure: PRBonn's map-closures next to our teacher and students, same ground truth.

Question (the one our place recognition answers): a robot drives a run under one condition; a map was
built from another run (another condition, possibly the other direction). For each query frame, which
place of the map is it at, and how sure is the method? Every ordered pair (database run d, query run
q != d) of the synthetic world is evaluated, exactly like the package's cross-run evaluation.

* **Database** = the whole database run (every region: the mapping run covered the town).
* **Queries** = the frames of the query run in ``--query-region`` (default ``test``, the region no
  model of ours was trained or selected on), every ``--query-stride``-th.
* **Ground truth** (``GroundTruthConfig``, via ``data.ground_truth.cross_run_pairs``): a query's true
  matches are the database frames within ``positive_m`` = 10 m (primary) and within ``correct_m`` =
  25 m (the retrieval radius; reported too). Queries without a true match stay in the PR sweep and can
  only be false positives.
* **Scoring** (``evaluation.metrics``, the sole definitions): each query proposes one database frame
  with a score; ``precision_recall`` sweeps the score: accepted and a true match = TP, accepted and
  not = FP, recall = TP / (queries that have a true match). PR-AUC, max F1, recall at 100 % precision
  and ``recall@1`` (= top-1 correct among queries with a match) come from it; all ordered pairs are
  pooled into one sweep.

**Our models** (checkpoint folders, ``--teacher`` camera+LiDAR fused head, ``--student`` camera
student, ``--lidar-student``; found under ``results/`` when not given, skipped with a message when
absent): the proposal is the most similar database frame (cosine of L2-normalised descriptors), the
score that similarity.

**LiDAR models** (``--lidar-model NAME=PATH``, repeatable: a checkpoint folder of a LiDAR model, e.g. the
polar encoder, or a classical kind's name, ``scan_context_fft`` / ``ring_key``) on single scans and on LiDAR
submaps of each ``--submap-lengths`` D (metres of travel, ``data.submap``; 0 = single scans) in each
``--submap-windows`` (``trailing``: the D metres driven up to the frame, what the mapping node builds online;
``centred``: +-D/2, offline only), accumulated with the world's ground-truth poses (as map-closures gets them)
and at most ``SubmapConfig.max_scans`` scans, 100 m range, no voxel filter. Database frames and queries read
the same kind of submap. Proposal and score as for our models (cosine). ``ms/query``: submap assembly from
clouds in memory + grid + forward at batch 1 (one thread) + flat search of a database run.

``--centred-map`` adds, per D > 0, trailing queries against *centred* map submaps: the map's keyframes lie in
the past (another run, or this run D/2 metres ago), so theirs can reach D/2 ahead; only the query's cannot.

**BEV re-ranking** (``--rerank-k K ...``, settings ``--bev '{json}'`` = ``BevVerificationConfig``): each query's
top-K database frames by cosine are checked by ``verification.bev`` (yaw from the polar grids' circular FFT
correlation, shift from the max-height images' FFT cross-correlation, score = image cosine at the best yaw and
shift) on the same kind of submap as the descriptor (built from each scan's structure points, kept once per
scan); the proposal is the candidate with the highest check score and its score is that (one row per K). Its
``ms/query`` adds the query's view and K checks (one thread) to the descriptor row's.

``--previous results.json`` carries the rows of an earlier run of this script that are not measured again
(e.g. map-closures, ~50 min; checkpoints no longer at hand) into the table and the plot, marked
"[earlier run]", with that run's command.

**map-closures** (PRBonn/MapClosures, ``pip install --no-deps map-closures==2.2.0``, its default
config: 0.5 m density maps, Hamming 50, ORB + HBST + 2D RANSAC): it closes loops between *local maps*
(scans accumulated over ``--map-range`` = 100 m of travel, its pipeline's ``max_range``) that need
odometry; we give it the world's **ground-truth poses as odometry** (no KISS-ICP drift; the clouds
are already motion-compensated), which favours it.

* database: each run cut into local maps exactly as its pipeline does (a new map once the vehicle is
  more than 100 m from the current map's origin; the points within 100 m carried over). Per query
  run, a fresh ``MapClosures`` per database run gets that run's maps in driving order (ids 0..M-1);
* query frame i of run q: the local map of run q's scans over the 100 m of travel up to and including
  scan i (the map its pipeline would hold at that moment, but ending at every query frame instead of
  once per 100 m), matched against each database run's instance with a fresh id >= M + 10 (so its
  "is far enough" index rule never hides a database map). The call also adds the query map to that
  instance (the API has no match-only call), so run q's earlier query maps stay in it, as its own
  earlier maps would in its pipeline; closures to anything but the database run's maps are dropped;
* proposal: the closure with the most inliers; its 2D-RANSAC pose places the query scan in the
  world (database map pose composed with the closure and the query scan's pose inside its local
  map) and the proposal is the database frame nearest to that estimate; score = the inlier count
  (no closure = score 0, never correct). Its own operating point (``inliers > inliers_threshold``
  = 5, what its pipeline keeps) is reported beside the max-F1 point.
* ``--single-scan`` adds the same with one scan per local map (no accumulation, no odometry): the
  single-frame question our models answer (slow: ~2500 database maps).

Timing (no disk reads counted; 2 CPU cores): map-closures ``integrate ms/scan`` (voxel map update),
``closure ms`` per local map while building a run's database (density map, ORB, HBST match-and-add,
RANSAC against every candidate: its pipeline's call), ``native ms/scan`` = integrate + closure / scans
per local map (its pipeline queries once per local map), and ``ms/query`` = building a query map + one
closure call (this protocol; the instance also holds the run's earlier query maps, which overlap the
new one and cost RANSAC calls, so an upper bound); our
models' ``ms/query``: preprocessing (image resize, BEV) + torch forward at batch 1 + flat search of a
database run.

    .venv/bin/python benchmarks/loop_closure_peers.py --single-scan --out docs/results/benchmarks/loop_closure_peers

(~50 min on 2 busy cores; without ``--single-scan`` about half; ``--query-stride 5`` for a quick look.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.spatial import cKDTree

from distilvpr_ros.config import GroundTruthConfig
from distilvpr_ros.data.ground_truth import cross_run_pairs
from distilvpr_ros.data.submap import SubmapConfig, SubmapSequence, accumulate_submap, lidar_extrinsic
from distilvpr_ros.data.synthetic import load_synthetic, read_world_meta
from distilvpr_ros.models.inference import embed_batch, embed_sequences, input_spec_of, model_inputs
from distilvpr_ros.evaluation.metrics import precision_recall
from distilvpr_ros.evaluation.plots import plot_pr
from distilvpr_ros.evaluation.report import markdown_table, to_jsonable
from distilvpr_ros.models.checkpoint import load_model, model_identity
from distilvpr_ros.models.preprocess import cloud_to_bev
from distilvpr_ros.utils.results import write_json
from distilvpr_ros.verification.bev import BevVerificationConfig, BevVerifier, bev_view, structure_points
from inference import find_checkpoint  # benchmarks/ is on sys.path when run as a script

MC_NAME = "map-closures, 100 m local maps (LiDAR, GT odometry)"
MC_SINGLE = "map-closures, single scan (LiDAR)"
MAX_RANGE_M = 100.0  # VoxelMap max_distance in its pipeline (kiss-icp data.max_range, set to 100 m there)
MODEL_ROWS = {  # option -> (row name, checkpoint kind, preferred run folder names when searching results/)
    "teacher": ("teacher (camera+LiDAR)", "teacher", ("teacher",)),
    "student": ("camera student (DistilVPR-SC)", "camera_student", ("camera__DistilVPR_SC", "student")),
    "lidar_student": ("LiDAR student (DistilVPR-SC)", "lidar_student", ("lidar__DistilVPR_SC",)),
}
NO_CLOSURE_SCORE = 0.0
CURVE_POINTS = 200  # PR points kept per method in the JSON (thinned evenly; the plot uses all)
EARLIER = "[earlier run]"  # suffix of the rows carried over from --previous
QUERY_ID_GAP = 10  # query map ids start this far above the last database map id (> its skip window of 3)


# -- checkpoints ------------------------------------------------------------------------------------

# -- map-closures -----------------------------------------------------------------------------------

def inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


class CloudCache:
    """xyz (float64) of a run's scans, read once (disk reads are not timed)."""

    def __init__(self, run):
        self.run, self.clouds = run, {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.clouds:
            self.clouds[i] = self.run.cloud(i)[:, :3].astype(np.float64)
        return self.clouds[i]


def native_local_maps(run, clouds: CloudCache, T_base_lidar: np.ndarray, map_range: float | None, voxel: float):
    """The run cut into local maps as map-closures' pipeline does (GT poses as odometry).

    ``map_range=None``: one map per scan (the single-scan variant). Returns
    ``[{"points" (float32), "T_world_map", "scans": (first, end)}]`` and the integration time per scan (s).
    """
    from map_closures.voxel_map import VoxelMap

    maps, start, T_map, integrate = [], 0, None, 0.0
    vm = VoxelMap(voxel, MAX_RANGE_M)
    for i in range(len(run)):
        T_scan = run.poses[i] @ T_base_lidar
        T_map = T_scan if T_map is None else T_map
        rel = inv(T_map) @ T_scan
        pts = clouds[i]
        t = time.perf_counter()
        vm.integrate_frame(pts, rel)
        integrate += time.perf_counter() - t
        if map_range is None:
            maps.append({"points": vm.point_cloud().astype(np.float32), "T_world_map": T_scan, "scans": (i, i + 1)})
            vm.clear()
            T_map = None
        elif np.linalg.norm(rel[:3, 3]) > map_range or i == len(run) - 1:
            maps.append({"points": vm.point_cloud().astype(np.float32), "T_world_map": T_map.copy(),
                         "scans": (start, i + 1)})
            vm.remove_far_away_points(rel[:3, 3])
            keep = vm.point_cloud()
            vm.clear()
            vm.integrate_frame(keep, inv(T_scan) @ T_map)
            T_map, start = T_scan.copy(), i
    return maps, integrate / max(len(run), 1)


def sliding_local_map(run, clouds: CloudCache, i: int, T_base_lidar: np.ndarray, map_range: float | None,
                      voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Local map of the scans over the last ``map_range`` metres of travel up to scan ``i`` (None: scan i only).

    Expressed in the frame of its oldest scan (as the pipeline's maps are); returns the points and the
    pose of scan ``i`` in that frame (what odometry knows).
    """
    from map_closures.voxel_map import VoxelMap

    xyz = run.poses[:, :3, 3]
    first = i
    while map_range is not None and first > 0 and np.linalg.norm(xyz[first - 1] - xyz[i]) <= map_range:
        first -= 1
    T_map = run.poses[first] @ T_base_lidar
    vm = VoxelMap(voxel, MAX_RANGE_M)
    for j in range(first, i + 1):
        vm.integrate_frame(clouds[j], inv(T_map) @ (run.poses[j] @ T_base_lidar))
    return vm.point_cloud(), inv(T_map) @ (run.poses[i] @ T_base_lidar)


def run_map_closures(full, queries, map_range: float | None, T_base_lidar) -> tuple[dict, dict]:
    """Proposals ``{(d, q): (db frame per query, score per query)}`` and timings of map-closures.

    Each run's local maps are first fed in driving order to a ``MapClosures`` of their own (its own
    pipeline: each new map matched against the earlier ones; these calls give the native timing). Per
    query run, one fresh instance per database run gets that run's maps, then every query map (built
    once) is matched against each, keeping closures to the database run's maps only.
    """
    from map_closures.config import MapClosuresConfig
    from map_closures.map_closures import MapClosures

    cfg = MapClosuresConfig()
    db_maps, integrate, scans_per_map, native_closure_s = [], [], [], []
    for run in full:
        maps, t_int = native_local_maps(run, CloudCache(run), T_base_lidar, map_range, cfg.density_map_resolution)
        mc = MapClosures(cfg)
        for k, m in enumerate(maps):  # its own pipeline on this run: the native timing
            t = time.perf_counter()
            mc.get_top_k_closures(k, m["points"].astype(np.float64), -1)
            native_closure_s.append(time.perf_counter() - t)
        db_maps.append(maps)
        integrate.append(t_int)
        scans_per_map.append(len(run) / len(maps))
    db_trees = [cKDTree(run.poses[:, :2, 3]) for run in full]
    proposals, query_closure_s, sliding_s, build_s = {}, [], [], []
    for q, qrun in enumerate(full):
        if not len(queries[q]):
            continue
        dbs = [d for d in range(len(full)) if d != q]
        instances, next_id = {}, {}
        for d in dbs:  # fresh per query run: the database run's maps, then this run's query maps
            instances[d] = MapClosures(cfg)
            for k, m in enumerate(db_maps[d]):
                instances[d].get_top_k_closures(k, m["points"].astype(np.float64), -1)
            next_id[d] = len(db_maps[d]) + QUERY_ID_GAP
        best = {d: np.full(len(queries[q]), -1, dtype=np.int64) for d in dbs}
        score = {d: np.full(len(queries[q]), NO_CLOSURE_SCORE) for d in dbs}
        clouds = CloudCache(qrun)
        for n, i in enumerate(queries[q]):
            t0 = time.perf_counter()
            points, T_map_scan = sliding_local_map(qrun, clouds, int(i), T_base_lidar, map_range,
                                                   cfg.density_map_resolution)
            build_s.append(time.perf_counter() - t0)
            for d in dbs:
                t1 = time.perf_counter()
                found = [c for c in instances[d].get_top_k_closures(next_id[d], points, -1)
                         if c.source_id < len(db_maps[d])]
                next_id[d] += 1
                query_closure_s.append(time.perf_counter() - t1)
                sliding_s.append(build_s[-1] + query_closure_s[-1])
                if not found:
                    continue
                c = max(found, key=lambda c: c.number_of_inliers)
                T_world_scan = db_maps[d][c.source_id]["T_world_map"] @ inv(np.asarray(c.pose)) @ T_map_scan
                T_world_base = T_world_scan @ inv(T_base_lidar)
                best[d][n] = int(db_trees[d].query(T_world_base[:2, 3])[1])
                score[d][n] = float(c.number_of_inliers)
        for d in dbs:
            proposals[(d, q)] = (best[d], score[d])
        print(f"  map-closures queries of {qrun.run:<13}: closures found for "
              f"{sum(int((score[d] > 0).sum()) for d in dbs)}/{len(dbs) * len(queries[q])} (query, database run)",
              flush=True)
    timing = {
        "integrate_ms_per_scan": 1e3 * float(np.mean(integrate)),
        "closure_ms_per_local_map_p50": 1e3 * float(np.median(native_closure_s)),
        "scans_per_local_map": float(np.mean(scans_per_map)),
        "query_map_build_ms_p50": 1e3 * float(np.median(build_s)),
        "query_closure_ms_p50": 1e3 * float(np.median(query_closure_s)),
        "sliding_ms_per_query_p50": 1e3 * float(np.median(sliding_s)),
    }
    timing["native_ms_per_scan"] = (timing["integrate_ms_per_scan"]
                                    + timing["closure_ms_per_local_map_p50"] / timing["scans_per_local_map"])
    timing["ms_per_query"] = timing["sliding_ms_per_query_p50"]
    return proposals, timing


# -- our models -------------------------------------------------------------------------------------

def run_model(model, full, queries, repeats: int) -> tuple[dict, dict]:
    """Proposals per ordered pair (most similar database frame, cosine) and ms/frame at batch 1."""
    descs = embed_sequences(model, full, progress=False)
    proposals = top1_proposals(descs, queries)
    # batch-1 latency: preprocessing + forward + flat search of one database run (sensor data preloaded)
    spec = input_spec_of(model)
    run = full[0]
    frames = [run[i] for i in range(min(repeats, len(run)))]
    db = descs[1]
    times = []
    for n, s in enumerate([frames[0]] * 3 + frames):
        t = time.perf_counter()
        desc = embed_batch(model, model_inputs(spec, [s.image], [s.cloud]))
        int(np.argmax(db @ desc[0]))
        if n >= 3:
            times.append(time.perf_counter() - t)
    return proposals, {"ms_per_query": 1e3 * float(np.median(times)), "image_size": list(spec.image_size or [])}


def submap_label(length_m: float, window: str, map_window: str | None = None) -> str:
    if length_m <= 0:
        return "single scan"
    if map_window is None or map_window == window:
        return f"{length_m:g} m {window} submaps"
    return f"{length_m:g} m submaps, {window} queries / {map_window} map"


def lidar_descriptors(models: dict, full, length_m: float, window: str, cache: Path | None = None,
                      identities: dict | None = None) -> dict[str, list[np.ndarray]]:
    """Per LiDAR model, one L2-normalised descriptor array per run; each frame's cloud (scan or submap) is
    built once and rasterised for every model's grid. ``cache``: a folder where each model's arrays are kept
    as ``.npz``, keyed by its identity (name, weights' sha256), the submap config and the runs, and reused."""
    cfg = SubmapConfig(length_m=length_m, window=window)
    out: dict[str, list[np.ndarray]] = {}
    files = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        runs = [(str(getattr(run, "run_dir", run.run)), len(run)) for run in full]
        dump = cfg.model_dump()
        if dump.get("scan_voxel_m") is None:  # a later field at its default: keep the earlier caches' keys
            dump.pop("scan_voxel_m", None)
        for name in models:
            key = json.dumps([list((identities or {}).get(name, (name,))), dump, runs])
            files[name] = cache / f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
            if files[name].is_file():
                with np.load(files[name]) as z:
                    out[name] = [z[f"run{k}"] for k in range(len(full))]
    todo = {name: model for name, model in models.items() if name not in out}
    if not todo:
        return out
    models = todo
    out.update({name: [] for name in models})
    for run in full:
        source = SubmapSequence(run, cfg, lidar_extrinsic(run)) if cfg.enabled else None
        grids: dict[str, list[np.ndarray]] = {name: [] for name in models}
        for i in range(len(run)):
            cloud = source.submap_cloud(i) if source is not None else run.cloud(i)
            for name, model in models.items():
                grids[name].append(cloud_to_bev(cloud, model.input_spec.bev))
        for name, model in models.items():
            g = np.stack(grids[name])
            out[name].append(np.concatenate([embed_batch(model, {"cloud": g[k:k + 64]}) for k in range(0, len(g), 64)]))
    for name in models:
        if name in files:
            np.savez(files[name], **{f"run{k}": d for k, d in enumerate(out[name])})
    return out


def top1_proposals(descs: list[np.ndarray], queries, db_descs: list[np.ndarray] | None = None) -> dict:
    """Per ordered pair, each query's most similar database frame and that cosine (``db_descs``: the database
    side's descriptors when they read another kind of submap; default the same)."""
    db_descs = db_descs or descs
    proposals = {}
    for d in range(len(descs)):
        for q in range(len(descs)):
            if q == d or not len(queries[q]):
                continue
            sim = descs[q][queries[q]] @ db_descs[d].T
            best = np.argmax(sim, axis=1)
            proposals[(d, q)] = (best, sim[np.arange(len(best)), best])
    return proposals


class StructureScans:
    """Per run, every scan's :func:`~distilvpr_ros.verification.bev.structure_points` (read once, kept)."""

    def __init__(self, cfg: BevVerificationConfig, reach_m: float):
        self.cfg, self.reach_m, self.runs, self.seconds = cfg, reach_m, {}, []  # seconds: per scan, no disk read

    def __call__(self, run) -> list[np.ndarray]:
        key = str(getattr(run, "run_dir", run.run))
        if key not in self.runs:
            self.runs[key] = []
            for i in range(len(run)):
                cloud = run.cloud(i)
                t = time.perf_counter()
                self.runs[key].append(structure_points(cloud, self.cfg, self.reach_m))
                self.seconds.append(time.perf_counter() - t)
        return self.runs[key]


def bev_views(full, scans: StructureScans, length_m: float, window: str) -> list[list]:
    """Per run, the :class:`~distilvpr_ros.verification.bev.BevView` of every frame's scan or submap (the same
    submap as the descriptors', from the scans' structure points)."""
    cfg = scans.cfg
    sub = SubmapConfig(length_m=length_m, window=window, max_range_m=cfg.extent_m)
    out, seconds = [], 0.0
    for run in full:
        reduced, T = scans(run), lidar_extrinsic(run)
        t = time.perf_counter()
        out.append([bev_view(accumulate_submap(reduced, run.poses, i, sub, T), cfg)
                    for i in range(len(run))])
        seconds += time.perf_counter() - t
    return out, seconds


def rerank_candidates(descs: list[np.ndarray], views: list[list], queries, k: int, verifier: BevVerifier,
                      db_descs: list[np.ndarray] | None = None, db_views: list[list] | None = None) -> dict:
    """Per ordered pair, the top-``k`` database frames by cosine, their cosines and their BEV scores
    (``(ids, cosine, bev)``, each ``queries x k``). ``db_descs`` / ``db_views``: the database side's when it
    reads another kind of submap than the queries (default: the same)."""
    db_descs, db_views = db_descs or descs, db_views or views
    out = {}
    for d in range(len(descs)):
        for q in range(len(descs)):
            if q == d or not len(queries[q]):
                continue
            sim = descs[q][queries[q]] @ db_descs[d].T
            top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            cos = np.take_along_axis(sim, top, axis=1)
            bev = np.array([[verifier.verify(views[q][i], db_views[d][j]).score for j in row]
                            for i, row in zip(queries[q], top)])
            out[(d, q)] = (top, cos, bev)
    return out


def bev_rerank_rows(label: str, timing: dict, descs: list[np.ndarray], db_descs: list[np.ndarray], full, queries,
                    views, db_views, ks: list[int], cfg: BevVerificationConfig, structure: StructureScans,
                    cache_file: Path | None = None) -> dict:
    """The re-ranked rows of one LiDAR row (one per K): proposals, and timing = the row's ms/query + the
    query's BEV view (structure points of its scan, its submap of them, rasterised) + K checks. ``views`` /
    ``db_views``: callables giving :func:`bev_views` of the query and the map side (only called when
    ``cache_file`` does not hold the candidates yet: it keeps them, their BEV scores and the timings)."""
    if cache_file is not None and cache_file.is_file():  # candidates and timings of an earlier run, same inputs
        with np.load(cache_file) as z:
            candidates = {tuple(int(v) for v in key.split("_")[1:]): (z[key], z[f"cos{key[3:]}"], z[f"bev{key[3:]}"])
                          for key in z.files if key.startswith("top_")}
            check_ms, view_ms = float(z["check_ms"]), float(z["view_ms"])
    else:
        (views, views_s), (db_views, _) = views(), db_views()
        frames = sum(len(run) for run in full)
        verifier = BevVerifier(cfg)
        t = time.perf_counter()
        candidates = rerank_candidates(descs, views, queries, max(ks), verifier, db_descs, db_views)
        rerank_s = time.perf_counter() - t
        check_ms = 1e3 * rerank_s / max(sum(top.size for top, _, _ in candidates.values()), 1)
        # per query: the structure points of its own scan (the earlier scans' are kept) + its submap view
        view_ms = 1e3 * (views_s / max(frames, 1) + float(np.median(structure.seconds)))
        if cache_file is not None:
            arrays = {f"{kind}_{d}_{q}": v[i] for (d, q), v in candidates.items()
                      for i, kind in enumerate(("top", "cos", "bev"))}
            np.savez(cache_file, check_ms=check_ms, view_ms=view_ms, **arrays)
    checks = sum(top.size for top, _, _ in candidates.values())
    print(f"  {label}: BEV views {view_ms:.1f} ms/frame, {check_ms:.2f} ms per check ({checks} checks)", flush=True)
    rows = {}
    for k in sorted(ks):
        rows[f"{label} + BEV re-rank top-{k}"] = (reranked_proposals(candidates, k), {
            **timing, "ms_per_query": timing["ms_per_query"] + view_ms + k * check_ms,
            "descriptor_ms_per_query": timing["ms_per_query"], "bev_view_ms_per_frame": view_ms,
            "bev_check_ms": check_ms, "rerank_k": k, "rerank": True}, None)
    return rows


def reranked_proposals(candidates: dict, k: int) -> dict:
    """Proposal = the candidate among the first ``k`` with the highest BEV score; its score = that BEV score."""
    proposals = {}
    for key, (top, _, bev) in candidates.items():
        best = np.argmax(bev[:, :k], axis=1)
        proposals[key] = (top[np.arange(len(top)), best], bev[np.arange(len(top)), best])
    return proposals


def lidar_latency(model, run, db: np.ndarray, length_m: float, window: str, frames: int) -> float:
    """Median ms per query at batch 1, one thread: submap assembly (clouds in memory) + grid + forward + search."""
    cfg = SubmapConfig(length_m=length_m, window=window)
    seq = SubmapSequence(run, cfg, lidar_extrinsic(run), cache_scans=frames + 2 * cfg.max_scans)
    start = min(len(run) // 2, max(len(run) - frames, 0))
    for j in range(max(start - cfg.max_scans, 0), min(start + frames + cfg.max_scans, len(run))):
        seq.cloud(j)  # read from disk before timing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for i in [start] * 3 + list(range(start, min(start + frames, len(run)))):
            t = time.perf_counter()
            cloud = seq.submap_cloud(i) if cfg.enabled else seq.cloud(i)
            desc = embed_batch(model, {"cloud": cloud_to_bev(cloud, model.input_spec.bev)[None]})
            int(np.argmax(db @ desc[0]))
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * float(np.median(times[3:]))


# -- scoring ----------------------------------------------------------------------------------------

def ground_truth(full, queries, radius: float) -> dict:
    """Per ordered pair, the true matches (database frames within ``radius``) of each query frame."""
    cfg = GroundTruthConfig(correct_m=radius)
    out = {}
    for d in range(len(full)):
        for q in range(len(full)):
            if q == d or not len(queries[q]):
                continue
            db = SimpleNamespace(poses=full[d].poses)
            qs = SimpleNamespace(poses=full[q].poses[queries[q]])
            pair = next(p for p in cross_run_pairs([db, qs], cfg) if p.database == 0)
            out[(d, q)] = pair.true_matches
    return out


def score(proposals: dict, truth: dict, same_dir: dict, operating_threshold: float | None = None) -> dict:
    """Pooled PR metrics over all pairs, and the same on same- / opposite-direction pairs."""
    def pooled(keys) -> dict:
        best = np.concatenate([proposals[k][0] for k in keys])
        scores = np.concatenate([proposals[k][1] for k in keys]).astype(float)
        tm = [m for k in keys for m in truth[k]]
        has = np.array([len(m) > 0 for m in tm])
        correct = np.array([b >= 0 and b in set(m.tolist()) for b, m in zip(best, tm)])
        pr = precision_recall(scores, correct, has)
        f1 = 2 * pr["precision"] * pr["recall"] / np.maximum(pr["precision"] + pr["recall"], 1e-12)
        at = int(np.argmax(f1)) if len(f1) else 0
        out = {"queries": int(len(has)), "queries_with_match": int(has.sum()),
               "recall@1": float(correct[has].mean()) if has.any() else float("nan"),
               "pr_auc": pr["auc"], "max_f1": pr["max_f1"], "recall@100p": pr["recall@100p"],
               "precision_at_max_f1": float(pr["precision"][at]) if len(f1) else float("nan"),
               "recall_at_max_f1": float(pr["recall"][at]) if len(f1) else float("nan"),
               "threshold_at_max_f1": float(pr["thresholds"][at]) if len(f1) else float("nan"),
               "curve": {"precision": pr["precision"], "recall": pr["recall"]}}
        if operating_threshold is not None:
            accepted = scores > operating_threshold
            tp = int((accepted & correct).sum())
            p = tp / max(int(accepted.sum()), 1) if accepted.any() else 1.0
            r = tp / max(int(has.sum()), 1)
            out.update(operating_threshold=operating_threshold, operating_precision=p, operating_recall=r,
                       operating_f1=2 * p * r / (p + r) if p + r else 0.0)
        return out

    keys = sorted(proposals)
    return {"all": pooled(keys),
            "same_direction": pooled([k for k in keys if same_dir[k]]),
            "opposite_direction": pooled([k for k in keys if not same_dir[k]])}


# -- report -----------------------------------------------------------------------------------------

def thin_curve(precision: np.ndarray, recall: np.ndarray, points: int = CURVE_POINTS) -> dict:
    """At most ``points`` evenly spaced operating points of a PR curve (first and last kept), rounded."""
    keep = np.unique(np.linspace(0, len(recall) - 1, points).astype(int)) if len(recall) else np.zeros(0, int)
    return {"precision": np.round(np.asarray(precision)[keep], 4), "recall": np.round(np.asarray(recall)[keep], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    for option, (name, kind, _) in MODEL_ROWS.items():
        p.add_argument(f"--{option.replace('_', '-')}", type=Path, default=None,
                       help=f"checkpoint folder of the {name} (default: searched under --results)")
    p.add_argument("--results", type=Path, default=Path("results"), help="where to look for checkpoints")
    p.add_argument("--no-models", action="store_true", help="only map-closures")
    p.add_argument("--no-map-closures", action="store_true", help="only our models")
    p.add_argument("--query-region", default="test", help="region of the query frames ('all' for every frame)")
    p.add_argument("--query-stride", type=int, default=1, help="every n-th query frame")
    p.add_argument("--map-range", type=float, default=100.0, help="map-closures local map extent (m of travel)")
    p.add_argument("--single-scan", action="store_true",
                   help="also run map-closures on single scans (no accumulation: the single-frame question)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--latency-frames", type=int, default=40, help="frames timed one at a time per model")
    p.add_argument("--lidar-model", action="append", default=[], metavar="NAME=PATH",
                   help="a LiDAR model row: checkpoint folder, or a classical kind (scan_context_fft, ring_key); "
                   "repeatable")
    p.add_argument("--submap-lengths", type=float, nargs="+", default=[0.0, 20.0, 50.0], metavar="D",
                   help="LiDAR-model inputs: submaps of D metres of travel (0: single scans)")
    p.add_argument("--submap-windows", nargs="+", choices=("trailing", "centred"), default=["trailing"],
                   help="where the D metres lie (trailing: online, as the mapping node)")
    p.add_argument("--rerank-k", type=int, nargs="+", default=[], metavar="K",
                   help="LiDAR rows: also re-rank each query's top-K by the bird's-eye-view check "
                   "(verification/bev.py) and score the proposal by it; one row per K")
    p.add_argument("--centred-map", action="store_true",
                   help="LiDAR rows: also trailing queries against centred map submaps (a map's keyframes are in the "
                   "past, so their submap can reach D/2 ahead; the query's cannot)")
    p.add_argument("--bev", default="{}", help="BevVerificationConfig fields as JSON (default: its defaults)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder keeping LiDAR-model descriptors (.npz per model, submap config and world) for reuse")
    p.add_argument("--previous", type=Path, default=None,
                   help="results.json of an earlier run: its rows not measured now are carried over, marked")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/loop_closure_peers"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gt_cfg = GroundTruthConfig()
    radii = {"10m": gt_cfg.positive_m, "25m": gt_cfg.correct_m}

    meta = read_world_meta(args.world)
    T_base_lidar = np.asarray(meta["calibration"]["T_base_lidar"], dtype=float)
    full = load_synthetic(args.world)
    queries = []
    for run in full:
        keep = np.ones(len(run), bool) if args.query_region == "all" else run._cols["region"] == args.query_region
        queries.append(np.flatnonzero(keep)[::args.query_stride])
    direction = [int(run.info.get("direction", 0)) for run in full]
    pairs = [(d, q) for d in range(len(full)) for q in range(len(full)) if d != q and len(queries[q])]
    same_dir = {(d, q): direction[d] == direction[q] for d, q in pairs}
    truth = {name: ground_truth(full, queries, r) for name, r in radii.items()}
    print(f"world {args.world}: {len(full)} runs, {len(pairs)} ordered pairs, "
          f"{sum(len(queries[q]) for _, q in pairs)} queries ({args.query_region} region, stride "
          f"{args.query_stride}); true match within {radii['10m']:g} m (and {radii['25m']:g} m)", flush=True)

    result = {"command": ".venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "world": str(args.world), "query_region": args.query_region, "query_stride": args.query_stride,
              "pairs": len(pairs), "radii_m": radii, "threads": args.threads, "cpu_count": os.cpu_count(),
              "load_average_before": list(os.getloadavg()), "methods": {}, "skipped": {}}
    t_start = time.perf_counter()
    methods: dict[str, tuple[dict, dict, float | None]] = {}
    if not args.no_models:
        for option, (name, kind, preferred) in MODEL_ROWS.items():
            path = getattr(args, option) or find_checkpoint(args.results, kind, preferred)
            if path is None:
                msg = f"no {kind} checkpoint given (--{option.replace('_', '-')}) or found under {args.results}"
                print(f"SKIP {name}: {msg}", flush=True)
                result["skipped"][name] = msg
                continue
            print(f"{name}: {path}", flush=True)
            t = time.perf_counter()
            model = load_model(path, expect_kind=kind)
            props, timing = run_model(model, full, queries, args.latency_frames)
            timing["checkpoint"] = str(path)
            timing["wall_s"] = time.perf_counter() - t
            methods[name] = (props, timing, None)
    lidar_models, identities = {}, {}
    bev_cfg = BevVerificationConfig(**json.loads(args.bev))
    structure = StructureScans(bev_cfg, bev_cfg.extent_m + max(args.submap_lengths, default=0.0))
    if args.rerank_k:
        result["bev_verification"] = {"config": bev_cfg.model_dump(), "rerank_k": args.rerank_k}
    for spec in args.lidar_model:
        name, _, path = spec.partition("=")
        lidar_models[name] = load_model(path or name)
        if input_spec_of(lidar_models[name]).inputs != ("cloud",):
            raise SystemExit(f"--lidar-model {spec}: not a LiDAR-only model ({lidar_models[name].kind})")
        result.setdefault("lidar_models", {})[name] = {"path": path or name, "kind": lidar_models[name].kind}
        identities[name] = model_identity(path or name)
    views_memo: dict[tuple[float, str], tuple[list, float]] = {}  # (D, window) -> BEV views, seconds
    for length in args.submap_lengths if lidar_models else []:
        combos = [(w, w) for w in (args.submap_windows if length > 0 else ["trailing"])]
        if length > 0 and args.centred_map:
            combos.append(("trailing", "centred"))
        for window, db_window in combos:
            t = time.perf_counter()
            descs = lidar_descriptors(lidar_models, full, length, window, args.cache, identities)
            db_descs = descs if db_window == window else lidar_descriptors(lidar_models, full, length, db_window,
                                                                           args.cache, identities)
            wall = time.perf_counter() - t
            print(f"LiDAR models, {submap_label(length, window, db_window)}: descriptors in {wall:.0f} s", flush=True)
            for name, model in lidar_models.items():
                label = f"LiDAR {name}, {submap_label(length, window, db_window)}"
                timing = {"ms_per_query": lidar_latency(model, full[0], db_descs[name][1], length, window,
                                                        args.latency_frames),
                          "checkpoint": result["lidar_models"][name]["path"], "kind": model.kind,
                          "submap": SubmapConfig(length_m=length, window=window).model_dump(),
                          "map_submap_window": db_window, "descriptors_wall_s_all_models": wall}
                methods[label] = (top1_proposals(descs[name], queries, db_descs[name]), timing, None)
                if args.rerank_k:
                    def views_of(w, length=length):
                        if (length, w) not in views_memo:
                            views_memo[(length, w)] = bev_views(full, structure, length, w)
                        return views_memo[(length, w)]

                    cache_file = None
                    if args.cache is not None:
                        key = json.dumps([list(identities[name]), length, window, db_window, bev_cfg.model_dump(),
                                          max(args.rerank_k), [q.tolist() for q in queries],
                                          [(str(getattr(run, "run_dir", run.run)), len(run)) for run in full]])
                        cache_file = args.cache / f"{name}_rerank_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
                    methods.update(bev_rerank_rows(label, timing, descs[name], db_descs[name], full, queries,
                                                   lambda: views_of(window), lambda: views_of(db_window),
                                                   args.rerank_k, bev_cfg, structure, cache_file))
    if not args.no_map_closures:
        try:
            import map_closures  # noqa: F401
        except ImportError:
            msg = "map_closures is not installed: .venv/bin/pip install --no-deps -r benchmarks/requirements.txt"
            print(f"SKIP map-closures: {msg}", flush=True)
            result["skipped"]["map-closures"] = msg
        else:
            from map_closures.config import MapClosuresConfig
            variants = [(MC_NAME, args.map_range)] + ([(MC_SINGLE, None)] if args.single_scan else [])
            for name, map_range in variants:
                print(f"{name}:", flush=True)
                t = time.perf_counter()
                props, timing = run_map_closures(full, queries, map_range, T_base_lidar)
                timing["wall_s"] = time.perf_counter() - t
                timing["map_range_m"] = map_range
                timing["config"] = MapClosuresConfig().model_dump()
                methods[name] = (props, timing, float(MapClosuresConfig().inliers_threshold))

    rows, curves = [], {}
    for name, (props, timing, op) in methods.items():
        scored = {r: score(props, truth[r], same_dir, op) for r in radii}
        a = scored["10m"]["all"]
        curves[name] = (a["curve"]["precision"], a["curve"]["recall"], a["pr_auc"])
        for blocks in scored.values():
            for block in blocks.values():
                block.pop("curve")
        a["curve"] = thin_curve(*curves[name][:2])  # the JSON keeps one curve per method: the plot's
        result["methods"][name] = {"timing": timing, **scored}
        rows.append(table_row(name, result["methods"][name], op is not None))
    if args.previous is not None:  # rows of an earlier run not measured now, marked
        previous = json.loads(args.previous.read_text())
        result["previous"] = {"path": str(args.previous), "command": previous["command"],
                              "load_average_before": previous.get("load_average_before")}
        for name, m in previous["methods"].items():
            base = name.removesuffix(f" {EARLIER}")
            if base in methods:
                continue
            label = f"{base} {EARLIER}"  # a row the earlier run carried over keeps the command that measured it
            result["methods"][label] = {**m, "earlier_run": m.get("earlier_run", previous["command"])}
            a = m["10m"]["all"]
            curves[label] = (np.asarray(a["curve"]["precision"]), np.asarray(a["curve"]["recall"]), a["pr_auc"])
            rows.append(table_row(label, m, "operating_precision" in a))
    result["load_average_after"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t_start
    columns = {"method": "method", "r1_10": "R@1", "auc_10": "PR-AUC", "f1_10": "max F1", "p_10": "P@maxF1",
               "rec_10": "R@maxF1", "r100p_10": "R@100P", "op": "own operating point", "same_f1": "max F1 same dir",
               "opp_f1": "max F1 opp. dir", "r1_25": "R@1 (25 m)", "f1_25": "max F1 (25 m)", "ms": "ms/query",
               "ms_own": "ms/scan (own pipeline)"}
    table = markdown_table(rows, columns, fmt={"ms": ".1f", "ms_own": ".1f"})
    print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", to_jsonable(result))
    if curves:
        plot_pr(curves, args.out / "pr.png", title=f"Cross-run loop closure, {args.query_region} queries, "
                f"true match within {radii['10m']:g} m", highlight=[MC_NAME, f"{MC_NAME} {EARLIER}"])
    write_readme(args.out / "README.md", result, table)
    print(f"-> {args.out}")


def table_row(name: str, m: dict, operating: bool) -> dict:
    """One table row from a method's scored JSON block (``10m`` / ``25m`` / ``timing``)."""
    a, b, timing = m["10m"]["all"], m["25m"]["all"], m["timing"]
    return {"method": name, "r1_10": a["recall@1"], "auc_10": a["pr_auc"], "f1_10": a["max_f1"],
            "p_10": a["precision_at_max_f1"], "rec_10": a["recall_at_max_f1"], "r100p_10": a["recall@100p"],
            "op": (f"P {a['operating_precision']:.3f} R {a['operating_recall']:.3f} "
                   f"F1 {a['operating_f1']:.3f}") if operating else "–",
            "same_f1": m["10m"]["same_direction"]["max_f1"], "opp_f1": m["10m"]["opposite_direction"]["max_f1"],
            "r1_25": b["recall@1"], "f1_25": b["max_f1"], "ms": timing["ms_per_query"],
            "ms_own": timing.get("native_ms_per_scan", timing["ms_per_query"])}


def write_readme(path: Path, result: dict, table: str) -> None:
    lines = [
        "# Cross-run LiDAR loop closure: map-closures vs the teacher and students",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['pairs']} ordered (database run, query run) pairs of `{result['world']}`; database = the whole "
        f"database run, queries = the query run's `{result['query_region']}`-region frames "
        f"(stride {result['query_stride']}). "
        f"A proposal is correct when the proposed database frame lies within {result['radii_m']['10m']:g} m "
        f"(`GroundTruthConfig.positive_m`; the 25 m columns use `correct_m`) of the query's true position. "
        "PR over the proposal's score pooled over all pairs (`evaluation.metrics.precision_recall`); R@1 = "
        "proposal correct among queries with a true match. map-closures runs on ground-truth poses as "
        "odometry. Protocol details: the docstring of `benchmarks/loop_closure_peers.py`.",
        "",
        table,
        "![PR curves](pr.png)",
        "",
    ]
    for name, m in result["methods"].items():
        mc = m["timing"]
        if "integrate_ms_per_scan" not in mc:
            continue
        lines += [
            f"{name}: integrate {mc['integrate_ms_per_scan']:.1f} ms/scan, closure call "
            f"{mc['closure_ms_per_local_map_p50']:.0f} ms per local map (p50), {mc['scans_per_local_map']:.1f} "
            f"scans per local map -> **{mc['native_ms_per_scan']:.1f} ms/scan in its own pipeline** "
            f"(one answer per local map); this protocol's query: build the query map "
            f"{mc['query_map_build_ms_p50']:.0f} ms + closure call = {mc['sliding_ms_per_query_p50']:.0f} ms (p50).",
            "",
        ]
    for name, why in result["skipped"].items():
        lines += [f"Skipped {name}: {why}.", ""]
    for name, m in result["methods"].items():
        if m["timing"].get("rerank"):
            mt = m["timing"]
            lines.append(f"- {name}: ms/query = the descriptor row's {mt['descriptor_ms_per_query']:.1f} + the query's "
                         f"BEV view {mt['bev_view_ms_per_frame']:.1f} + {mt['rerank_k']} checks x "
                         f"{mt['bev_check_ms']:.2f} ms (one thread)")
        elif "checkpoint" in m["timing"] and "submap" in m["timing"]:
            lines.append(f"- {name}: `{m['timing']['checkpoint']}` ({m['timing']['kind']}); ms/query = submap "
                         "assembly + grid + torch forward at batch 1, one thread + flat search")
        elif "checkpoint" in m["timing"]:
            size = "x".join(map(str, m["timing"]["image_size"])) or "BEV 64x64"
            lines.append(f"- {name}: `{m['timing']['checkpoint']}`, input {size} "
                         f"(ms/query = preprocessing + torch forward at batch 1 + flat search)")
    earlier = sorted({m["earlier_run"] for m in result["methods"].values() if "earlier_run" in m})
    if earlier:
        lines += ["", f"Rows marked {EARLIER} are carried over (`--previous`), measured by: "
                  + "; ".join(f"`{c}`" for c in earlier)]
    lines += ["", f"Load average before/after: {result['load_average_before'][0]:.2f} / "
              f"{result['load_average_after'][0]:.2f} on {result['cpu_count']} cores; "
              f"total {result['wall_s']:.0f} s.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
