"""End-to-end SLAM evaluation (``distilvpr slam-eval``): map a run with revisits from drifting odometry,
close its loops with the teacher and LiDAR verification, optimise the pose graph, score it against ground truth.

Steps (:func:`run_slam_eval`):

1. one run of a generated world whose config has ``odometry_drift`` (e.g. ``config/world_slam.yaml``): its
   drifting odometry is recomputed at the frame stamps from the world's drift model and seed, exactly as
   the generator writes it to the bags' ``/odom_drift`` (:func:`drifted_odometry`);
2. the map is built from that odometry (:func:`~distilvpr_ros.pipeline.offline.build_map_from_sequence`,
   the mapping node's keyframer, teacher-space loop proposals, LiDAR verification); every keyframe's
   proposal and verification are collected;
3. each verified loop becomes a :class:`~.loops.LoopClosure`: the registration's ``match_T_query`` with a
   covariance from the registration's inlier RMS distance (:class:`SlamEvalConfig`);
4. :func:`~.pose_graph.optimize_pose_graph` (robust kernel, GNC by default) on the keyframes' odometry;
5. evo ATE/RPE (:func:`~distilvpr_ros.evaluation.trajectory.score_trajectory`) of the odometry and of the
   optimised keyframes against the ground truth at the keyframe stamps.

A loop is *right* when its transform agrees with the ground truth's relative pose of the two keyframes
within ``wrong_loop_m`` / ``wrong_loop_deg``, and a proposal is right when the two keyframes lie within
``correct_m`` of each other (ground truth). Outputs in ``<results>/slam_eval/<timestamp>/``: ``config.json``,
``ground_truth.tum`` / ``odometry.tum`` / ``optimized.tum`` (keyframes), ``loops.json`` (each proposal, its
verification and what the graph did with it), ``metrics.json``, ``report.md``, ``trajectory.png``,
``ate_along.png`` and the map (``map/``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..config import Section
from ..data.geometry import interpolate_poses, invert
from ..data.synthetic import SyntheticRun, load_synthetic, read_world_meta
from ..data.world.config import WorldConfig
from ..data.world.drift import simulate_drift
from ..data.world.generate import STREAM_DRIFT, odometry_stamps
from ..evaluation.trajectory import plot_errors_along, plot_trajectories, score_trajectory, write_tum
from ..utils.results import make_run_dir, write_json
from .loops import LoopClosure
from .pose_graph import ACCEPTED, DOWN_WEIGHTED, REJECTED, PoseGraphConfig, optimize_pose_graph


class SlamEvalConfig(Section):
    """What ``slam-eval`` turns a LiDAR registration into, and how it judges loops against ground truth."""

    loop_sigma_translation_m: float = Field(
        0.1, gt=0, le=100, description="loop translation std floor (m); the registration's inlier RMS if larger")
    loop_sigma_rotation_deg: float = Field(1.0, gt=0, le=90, description="loop rotation std (deg)")
    loop_sigma_z_factor: float = Field(
        1.0, gt=0, le=100, description="the z, roll and pitch std are this multiple of the planar ones")
    wrong_loop_m: float = Field(
        2.0, gt=0, le=1e3, description="a loop is wrong when its translation is this far from the ground truth's (m)")
    wrong_loop_deg: float = Field(
        10.0, gt=0, le=180, description="... or its rotation this far from the ground truth's (deg)")
    align: Literal["se3", "sim3", "none"] = Field("se3", description="trajectory alignment before ATE")
    rpe_delta_m: float = Field(20.0, gt=0, le=1e4, description="RPE over this distance travelled (m)")
    pose_graph: PoseGraphConfig = Field(default_factory=PoseGraphConfig)


class DriftedRun:
    """A :class:`~distilvpr_ros.data.synthetic.SyntheticRun` whose ``poses`` are drifting odometry
    (samples keep the sensor data; ``ground_truth`` keeps the true poses)."""

    def __init__(self, run: SyntheticRun, poses: np.ndarray):
        if len(poses) != len(run):
            raise ValueError(f"{len(poses)} odometry poses for {len(run)} frames")
        self.base, self.run, self.run_dir = run, run.run, run.run_dir
        self.timestamps, self.poses, self.ground_truth = run.timestamps, np.asarray(poses, float), run.poses

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return replace(self.base[i], pose=self.poses[i].copy())


def world_config(world: str | Path) -> WorldConfig:
    """The :class:`WorldConfig` a generated world was made with (``world.json``)."""
    return WorldConfig.model_validate(read_world_meta(Path(world))["config"])


def drifted_odometry(world: str | Path, run_index: int) -> tuple[SyntheticRun, np.ndarray]:
    """Run ``run_index`` of a generated world and its drifting odometry at the frame stamps (N, 4, 4): the
    world's drift model, seeded as the generator seeds ``/odom_drift`` (frames are its even messages)."""
    cfg = world_config(world)
    if cfg.odometry_drift is None:
        raise ValueError(f"{world}: the world has no odometry_drift section; generate one with it, e.g. "
                         "distilvpr generate --preset tiny --config config/world_slam.yaml")
    runs = load_synthetic(Path(world))
    if not 0 <= run_index < len(runs):
        raise ValueError(f"run {run_index} not in the world (it has {len(runs)} runs)")
    run = runs[run_index]
    stamps = odometry_stamps(run.timestamps)
    drift = simulate_drift(interpolate_poses(stamps, run.timestamps, run.poses), stamps, cfg.odometry_drift,
                           [cfg.seed, STREAM_DRIFT, run_index])
    return run, drift.poses[::2]


def loop_from_registration(t_query: float, t_match: float, transform: np.ndarray, rmse: float,
                           cfg: SlamEvalConfig, meta: dict | None = None) -> LoopClosure:
    """A loop closure from a verified registration: ``transform`` is ``match_T_query`` (base frames)."""
    st = max(cfg.loop_sigma_translation_m, float(rmse) if np.isfinite(rmse) else 0.0)
    sr = np.deg2rad(cfg.loop_sigma_rotation_deg)
    z = cfg.loop_sigma_z_factor
    cov = np.diag(np.square([st, st, z * st, z * sr, z * sr, sr]))
    return LoopClosure(t_query, t_match, transform, cov, dict(meta or {}))


def transform_error(T: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """Translation (m) and rotation (deg) of ``inv(T_true) @ T``."""
    D = invert(T_true) @ T
    angle = np.degrees(np.arccos(np.clip((np.trace(D[:3, :3]) - 1) / 2, -1.0, 1.0)))
    return float(np.linalg.norm(D[:3, 3])), float(angle)


def run_slam_eval(world: str | Path, teacher: str | Path, student: str | Path, *, run_index: int = 0,
                  node_config: Any = None, config: SlamEvalConfig | None = None, out_dir: str | Path | None = None,
                  results_root: str | Path = "results", progress: bool = False, plant_wrong: int = 0) -> dict:
    """The evaluation of the module docstring; returns the metrics (also in ``metrics.json``).

    ``plant_wrong``: add that many wrong loops (:func:`~.synthetic.wrong_loops`: keyframes >= 30 m apart, a
    small random transform, the verified loops' covariance) to the verified ones, to check that the robust
    kernel keeps them out of the graph; they are counted in ``loops.planted_wrong`` and never as verified."""
    from ..config import CORRECT_M
    from ..pipeline.config import NodeConfig
    from ..pipeline.offline import build_map_from_sequence

    cfg = config or SlamEvalConfig()
    node_cfg = (node_config or NodeConfig()).model_copy(deep=True)
    node_cfg.map.resume = False
    world_cfg = world_config(world)
    run, odom = drifted_odometry(world, run_index)
    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "slam_eval")
    out.mkdir(parents=True, exist_ok=True)

    results: list = []
    summary = build_map_from_sequence(DriftedRun(run, odom), teacher, student, out / "map", node_cfg,
                                      progress=progress, on_keyframe=results.append)
    if len(results) < 3:
        raise ValueError(f"only {len(results)} keyframes: the run is too short to evaluate")
    frame_of = {float(t): i for i, t in enumerate(run.timestamps)}
    kf_frames = np.array([frame_of[r.stamp] for r in results])
    stamps = np.array([r.stamp for r in results])
    odom_kf, gt_kf = odom[kf_frames], run.poses[kf_frames]
    kf_of_id = {r.id: k for k, r in enumerate(results)}
    kf_of_stamp = {r.stamp: k for k, r in enumerate(results)}

    proposals, loops = [], []
    for k, r in enumerate(results):
        if r.proposed is None:
            continue
        m = kf_of_id.get(r.match.best.id if r.verification is None else r.verification.candidate)
        p_match = kf_of_stamp[float(r.proposed[1])]
        gap = float(np.linalg.norm(gt_kf[k, :3, 3] - gt_kf[p_match, :3, 3]))
        item = {"t_query": r.stamp, "t_match_proposed": r.proposed[1], "gt_distance_m": round(gap, 3),
                "proposal_right": bool(gap <= CORRECT_M), "verified": None}
        v = r.verification
        if v is not None:
            item.update(verified=bool(v.accepted), reason=v.reason, fitness=_finite(v.fitness),
                        inlier_ratio=float(v.inlier_ratio), candidates_tried=int(v.tried))
            if v.accepted and v.transform is not None and m is not None:
                true_T = invert(gt_kf[m]) @ gt_kf[k]
                err_m, err_deg = transform_error(v.transform, true_T)
                rmse = v.registration.rmse if v.registration is not None else float("nan")
                right = err_m <= cfg.wrong_loop_m and err_deg <= cfg.wrong_loop_deg
                item.update(t_match=float(stamps[m]), error_m=round(err_m, 3), error_deg=round(err_deg, 3),
                            loop_right=bool(right), rmse=_finite(rmse))
                loops.append(loop_from_registration(r.stamp, float(stamps[m]), v.transform, rmse, cfg,
                                                    {"source": "lidar_verification", "right": bool(right)}))
        proposals.append(item)

    loop_items = [p for p in proposals if p.get("t_match") is not None]
    if plant_wrong:
        from .synthetic import wrong_loops

        cov = loop_from_registration(0.0, 1.0, np.eye(4), float("nan"), cfg).covariance
        planted = wrong_loops(stamps, gt_kf, plant_wrong, sigma_translation_m=float(np.sqrt(cov[0, 0])),
                              sigma_rotation_deg=float(np.degrees(np.sqrt(cov[5, 5]))))
        for lc in planted:
            m, k = kf_of_stamp[lc.t_match], kf_of_stamp[lc.t_query]
            err_m, err_deg = transform_error(lc.transform, invert(gt_kf[m]) @ gt_kf[k])
            loop_items.append({"t_query": lc.t_query, "t_match": lc.t_match, "planted": True,
                               "error_m": round(err_m, 3), "error_deg": round(err_deg, 3), "loop_right": False})
        loops = loops + planted
    result = optimize_pose_graph(stamps, odom_kf, loops, cfg.pose_graph)
    for item, outcome in zip(loop_items, result.loops):
        item.update(graph=outcome.status, graph_reason=outcome.reason, weight=outcome.weight, chi2=outcome.chi2)

    kw = dict(align=cfg.align, rpe_delta=cfg.rpe_delta_m, rpe_unit="m")
    before = score_trajectory(stamps, gt_kf, stamps, odom_kf, **kw)
    after = score_trajectory(stamps, gt_kf, stamps, result.poses, **kw)
    write_tum(out / "ground_truth.tum", stamps, gt_kf)
    write_tum(out / "odometry.tum", stamps, odom_kf)
    write_tum(out / "optimized.tum", stamps, result.poses)
    write_json(out / "loops.json", {"loops": proposals,
                                    "planted_wrong": [p for p in loop_items if p.get("planted")]})
    xyz = result.poses[:, :3, 3]
    edges = [(xyz[o.keyframes[0]], xyz[o.keyframes[1]], o.status == ACCEPTED) for o in result.loops
             if o.keyframes is not None]
    plots = {"trajectory": str(plot_trajectories(gt_kf, {"odometry": odom_kf, "optimized": result.poses},
                                                 out / "trajectory.png", loops=edges,
                                                 title="slam-eval: drifting odometry and the optimised pose graph")),
             "ate_along": str(plot_errors_along({"odometry": before, "optimized": after}, out / "ate_along.png"))}

    graph = [p for p in loop_items if "graph" in p]
    accepted = [p for p in graph if p["graph"] == ACCEPTED]
    length = float(np.sum(np.linalg.norm(np.diff(gt_kf[:, :3, 3], axis=0), axis=1)))
    metrics = {
        "world": str(world), "run": run.run, "run_index": run_index,
        "laps": float(world_cfg.runs[run_index].laps), "frames": len(run), "keyframes": len(results),
        "length_m": round(length, 1), "duration_s": round(float(stamps[-1] - stamps[0]), 1),
        "drift_model": world_cfg.odometry_drift.model_dump(mode="json"),
        "loops": {"proposed": len(proposals), "proposed_right": sum(p["proposal_right"] for p in proposals),
                  "verified": len(loops) - plant_wrong,
                  "verified_right": sum(p.get("loop_right", False) for p in loop_items), "planted_wrong": plant_wrong,
                  "verification_rejected": sum(p["verified"] is False for p in proposals),
                  "accepted": len(accepted), "accepted_wrong": sum(not p["loop_right"] for p in accepted),
                  "down_weighted": sum(p["graph"] == DOWN_WEIGHTED for p in graph),
                  "rejected_input": sum(p["graph"] == REJECTED for p in graph),
                  "kernel_rejected": [{**{k: p[k] for k in ("t_query", "t_match", "loop_right", "error_m", "error_deg",
                                                            "graph_reason")}, "planted": bool(p.get("planted"))}
                                      for p in graph if p["graph"] != ACCEPTED]},
        "robust": result.robust, "graph_seconds": round(result.seconds, 4),
        "odometry": before.as_dict(), "optimized": after.as_dict(),
        "ate_reduction": 1.0 - after.ate["rmse"] / before.ate["rmse"] if before.ate["rmse"] > 0 else 0.0,
        "map": summary["map"], "plots": plots, "out": str(out),
    }
    write_json(out / "config.json", {"world": str(world), "run_index": run_index, "teacher": str(teacher),
                                     "student": str(student), "slam_eval": cfg.model_dump(mode="json"),
                                     "node": node_cfg.model_dump(mode="json")})
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(report(metrics))
    return metrics


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def report(m: dict) -> str:
    """Markdown summary of :func:`run_slam_eval`'s metrics."""
    lp, d = m["loops"], m["drift_model"]
    lines = [
        "# SLAM evaluation", "",
        f"World `{m['world']}`, run `{m['run']}` ({m['laps']:g} laps, {m['length_m']:.0f} m, {m['duration_s']:.0f} s, "
        f"{m['frames']} frames, {m['keyframes']} keyframes).",
        f"Drift model: scale error {d['scale_error']:+g} (walk {d['scale_walk_per_sqrt_m']:g}/sqrt(m)), yaw bias "
        f"{d['yaw_bias_deg_s']:+g} deg/s (walk {d['yaw_bias_walk_deg_s_per_sqrt_s']:g} deg/s/sqrt(s)), noise "
        f"{d['translation_noise_m_per_sqrt_m']:g} m/sqrt(m), {d['yaw_noise_deg_per_sqrt_m']:g} deg/sqrt(m).", "",
        "| trajectory | ATE RMSE (m) | ATE max (m) | RPE trans RMSE (m) | RPE rot RMSE (deg) |",
        "|---|---|---|---|---|"]
    for name in ("odometry", "optimized"):
        s = m[name]
        lines.append(f"| {name} | {s['ate_rmse_m']:.3f} | {s['ate_max_m']:.3f} | {s['rpe_trans_rmse_m']:.3f} | "
                     f"{s['rpe_rot_rmse_deg']:.3f} |")
    lines += ["", f"**ATE reduction: {100 * m['ate_reduction']:.1f} %** (alignment {m['odometry']['align']}, RPE over "
              f"{m['odometry']['rpe_delta']:g} {m['odometry']['rpe_unit']}; kernel {m['robust']}, "
              f"{m['graph_seconds']:.3f} s).", "",
              "| loops | count |", "|---|---|",
              f"| proposed by the teacher | {lp['proposed']} ({lp['proposed_right']} right) |",
              f"| rejected by LiDAR verification | {lp['verification_rejected']} |",
              f"| verified | {lp['verified']} ({lp['verified_right']} right) |",
              *([f"| planted wrong loops added | {lp['planted_wrong']} |"] if lp["planted_wrong"] else []),
              f"| accepted by the graph | {lp['accepted']} ({lp['accepted_wrong']} wrong) |",
              f"| down-weighted by the kernel | {lp['down_weighted']} |", ""]
    if lp["kernel_rejected"]:
        lines += ["Loops the graph left out:", ""]
        for k in lp["kernel_rejected"]:
            lines.append(f"- t_query {k['t_query']:.3f} -> t_match {k['t_match']:.3f}: "
                         f"{'right' if k['loop_right'] else 'wrong'}{' (planted)' if k['planted'] else ''} "
                         f"(error {k['error_m']} m, {k['error_deg']} deg); "
                         f"{k['graph_reason']}")
    else:
        lines.append("The graph left out no loop.")
    return "\n".join(lines) + "\n"


__all__ = ["DriftedRun", "SlamEvalConfig", "drifted_odometry", "loop_from_registration", "run_slam_eval",
           "transform_error", "world_config"]
