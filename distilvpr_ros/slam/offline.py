"""The offline pose-graph job behind ``distilvpr pose-graph``: read, optimise, score, write.

Inputs: odometry keyframes from a TUM file or a bag's ``nav_msgs/Odometry`` topic; loop closures from a
JSON or CSV file (:mod:`.loops`); optionally a ground truth (TUM file or bag topic) to score against.
Outputs in ``<results>/pose_graph/<timestamp>/`` (or ``out_dir``):

* ``config.json``: inputs and the :class:`~.pose_graph.PoseGraphConfig` used;
* ``odometry.tum``, ``optimized.tum``: the trajectory before and after (TUM format);
* ``loops.json``: what the graph did with each input loop (accepted / down-weighted / rejected + reason);
* ``metrics.json`` + ``metrics.md``: counts, timing and, with a ground truth, ATE/RPE before and after
  (:func:`~distilvpr_ros.evaluation.trajectory.score_trajectory`) and ``ate_reduction``;
* ``trajectory.png`` (top view before/after with the loop edges) and, with a ground truth,
  ``ate_along.png`` (error against the distance travelled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.trajectory import plot_errors_along, plot_trajectories, read_tum, score_trajectory, write_tum
from ..utils.results import make_run_dir, write_json
from .loops import load_loops
from .pose_graph import ACCEPTED, PoseGraphConfig, PoseGraphResult, optimize_pose_graph

BAG_SUFFIXES = (".mcap", ".db3", ".bag")


def read_trajectory(path: str | Path, topic: str = "/odom") -> tuple[np.ndarray, np.ndarray]:
    """Stamps and poses from a TUM file, or from ``topic`` of a bag (a folder or .mcap/.db3/.bag file)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in BAG_SUFFIXES:
        from ..data.rosbag_io import read_odometry

        return read_odometry(path, topic)
    return read_tum(path)


def run_pose_graph(odometry: str | Path, loops: str | Path, *, odom_topic: str = "/odom",
                   ground_truth: str | Path | None = None, gt_topic: str = "/odom",
                   config: PoseGraphConfig | None = None, align: str = "se3", rpe_delta: float = 10.0,
                   rpe_unit: str = "frames", out_dir: str | Path | None = None,
                   results_root: str | Path = "results") -> dict:
    """Optimise odometry with loop closures and write the outputs (module docstring); returns the metrics."""
    cfg = config or PoseGraphConfig()
    stamps, poses = read_trajectory(odometry, odom_topic)
    loop_list = load_loops(loops)
    gt = None if ground_truth is None else read_trajectory(ground_truth, gt_topic)
    result = optimize_pose_graph(stamps, poses, loop_list, cfg)

    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "pose_graph")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {
        "odometry": str(odometry), "odom_topic": odom_topic, "loops": str(loops),
        "ground_truth": None if ground_truth is None else str(ground_truth), "gt_topic": gt_topic,
        "align": align, "rpe_delta": rpe_delta, "rpe_unit": rpe_unit, "pose_graph": cfg.model_dump(mode="json")})
    write_tum(out / "odometry.tum", stamps, poses)
    write_tum(out / "optimized.tum", stamps, result.poses)
    write_json(out / "loops.json", {"loops": [o.as_dict() for o in result.loops]})

    metrics: dict = {**result.counts, "robust": result.robust, "seconds": round(result.seconds, 4),
                     "graph_error_initial": result.error_initial, "graph_error_final": result.error_final}
    plots = {"trajectory": str(plot_trajectories(
        None if gt is None else gt[1], {"odometry": poses, "optimized": result.poses}, out / "trajectory.png",
        loops=_loop_edges(result), title="Pose graph: odometry and optimised trajectory"))}
    if gt is not None:
        kw = dict(align=align, rpe_delta=rpe_delta, rpe_unit=rpe_unit)
        before = score_trajectory(*gt, stamps, poses, **kw)
        after = score_trajectory(*gt, stamps, result.poses, **kw)
        metrics["odometry"], metrics["optimized"] = before.as_dict(), after.as_dict()
        metrics["ate_reduction"] = 1.0 - after.ate["rmse"] / before.ate["rmse"] if before.ate["rmse"] > 0 else 0.0
        plots["ate_along"] = str(plot_errors_along({"odometry": before, "optimized": after}, out / "ate_along.png"))
    metrics["plots"] = plots
    metrics["out"] = str(out)
    write_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(metrics_table(metrics))
    return metrics


def _loop_edges(result: PoseGraphResult) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    xyz = result.poses[:, :3, 3]
    return [(xyz[o.keyframes[0]], xyz[o.keyframes[1]], o.status == ACCEPTED) for o in result.loops
            if o.keyframes is not None]


def metrics_table(m: dict) -> str:
    """A short markdown summary of :func:`run_pose_graph`'s metrics."""
    lines = ["# Pose graph", "",
             f"{m['keyframes']} keyframes, {m['loops']} loops: {m['accepted']} accepted, {m['down-weighted']} "
             f"down-weighted, {m['rejected']} rejected (kernel {m['robust']}, {m['seconds']:.3f} s).", ""]
    if "odometry" in m:
        lines += ["| trajectory | ATE RMSE (m) | ATE max (m) | RPE trans RMSE (m) | RPE rot RMSE (deg) |",
                  "|---|---|---|---|---|"]
        for name in ("odometry", "optimized"):
            s = m[name]
            lines.append(f"| {name} | {s['ate_rmse_m']:.3f} | {s['ate_max_m']:.3f} | {s['rpe_trans_rmse_m']:.3f} | "
                         f"{s['rpe_rot_rmse_deg']:.3f} |")
        lines += ["", f"ATE reduction: {100 * m['ate_reduction']:.1f} % (alignment {m['odometry']['align']}, "
                  f"RPE over {m['odometry']['rpe_delta']:g} {m['odometry']['rpe_unit']})."]
    return "\n".join(lines) + "\n"
