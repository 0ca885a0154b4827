"""Trajectory accuracy with evo: ATE and RPE against ground truth, TUM files, and the plots people read.

* :func:`write_tum` / :func:`read_tum`: TUM RGB-D format (``stamp x y z qx qy qz qw`` per line), through
  evo's ``file_interface``.
* :func:`score_trajectory`: associates the estimate with the ground truth by stamp (evo ``sync``, nearest
  stamp within ``max_diff_s``), aligns it (``align``: ``se3`` = Umeyama rotation + translation, the usual
  choice for metric odometry; ``sim3`` also fits a scale; ``none`` = as is) and computes

  - ATE: the translation error of every associated pose after alignment (evo ``APE``, translation part);
  - RPE: the error of the relative motion over ``rpe_delta`` frames or metres (evo ``RPE``), translation (m)
    and rotation (deg).

  Statistics are evo's (``rmse``, ``mean``, ``median``, ``std``, ``min``, ``max``).
* :func:`plot_trajectories` (top view of the ground truth and the estimates, loop edges optional) and
  :func:`plot_errors_along` (ATE of each estimate against the distance travelled).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
from evo.core import metrics, sync
from evo.core.trajectory import PoseTrajectory3D
from evo.core.units import Unit
from evo.tools import file_interface
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .plots import BASE_COLOUR, CORRECT_COLOUR, HIGHLIGHT_COLOUR, MUTED_COLOUR, PALETTE, WRONG_COLOUR, _save

Align = Literal["se3", "sim3", "none"]
STAT_KEYS = ("rmse", "mean", "median", "std", "min", "max")
#: Estimate colours: odometry blue, the optimised one orange, then others (green and red mark loop edges).
_COLOURS = (BASE_COLOUR, HIGHLIGHT_COLOUR, *(c for c in PALETTE[3:]))


def to_evo(stamps: np.ndarray, poses: np.ndarray) -> PoseTrajectory3D:
    """An evo trajectory from (N,) stamps (s) and (N, 4, 4) poses."""
    poses = np.asarray(poses, dtype=np.float64)
    return PoseTrajectory3D(poses_se3=list(poses), timestamps=np.asarray(stamps, dtype=np.float64))


def from_evo(traj: PoseTrajectory3D) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(traj.timestamps, dtype=np.float64), np.stack(traj.poses_se3)


def write_tum(path: str | Path, stamps: np.ndarray, poses: np.ndarray) -> Path:
    """Write a TUM trajectory file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_interface.write_tum_trajectory_file(str(path), to_evo(stamps, poses))
    return path


def read_tum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N,) stamps and (N, 4, 4) poses of a TUM trajectory file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TUM trajectory file not found")
    try:
        return from_evo(file_interface.read_tum_trajectory_file(str(path)))
    except file_interface.FileInterfaceException as e:
        raise ValueError(f"{path}: not a TUM trajectory file ({e})") from None


@dataclass
class TrajectoryScore:
    """ATE/RPE of one estimate against the ground truth, and the per-pose data behind the plots."""

    align: str
    stamps: np.ndarray  # (M,) associated stamps (the estimate's)
    distance_m: np.ndarray  # (M,) distance travelled along the ground truth
    ate_errors_m: np.ndarray  # (M,) translation error of each pose after alignment
    aligned: np.ndarray  # (M, 4, 4) the estimate after alignment
    ground_truth: np.ndarray  # (M, 4, 4) the associated ground-truth poses
    ate: dict  # evo statistics (m)
    rpe_translation: dict  # evo statistics (m)
    rpe_rotation: dict  # evo statistics (deg)
    rpe_delta: float
    rpe_unit: str

    def as_dict(self) -> dict:
        """Stable JSON keys: ``ate_rmse_m`` ..., ``rpe_trans_rmse_m`` ..., ``rpe_rot_rmse_deg`` ..."""
        out: dict = {"align": self.align, "poses": int(len(self.stamps)), "rpe_delta": self.rpe_delta,
                     "rpe_unit": self.rpe_unit}
        for prefix, stats, unit in (("ate", self.ate, "m"), ("rpe_trans", self.rpe_translation, "m"),
                                    ("rpe_rot", self.rpe_rotation, "deg")):
            out.update({f"{prefix}_{k}_{unit}": float(stats[k]) for k in STAT_KEYS if k in stats})
        return out


def score_trajectory(gt_stamps: np.ndarray, gt_poses: np.ndarray, stamps: np.ndarray, poses: np.ndarray, *,
                     align: Align = "se3", rpe_delta: float = 1.0, rpe_unit: Literal["frames", "m"] = "frames",
                     max_diff_s: float = 0.01) -> TrajectoryScore:
    """ATE and RPE of an estimate against the ground truth (module docstring)."""
    if align not in ("se3", "sim3", "none"):
        raise ValueError(f"align must be se3, sim3 or none, got {align!r}")
    ref, est = sync.associate_trajectories(to_evo(gt_stamps, gt_poses), to_evo(stamps, poses), max_diff=max_diff_s)
    if ref.num_poses < 3:
        raise ValueError(f"only {ref.num_poses} poses of the estimate have a ground-truth stamp within "
                         f"{max_diff_s} s; cannot score")
    est = copy.deepcopy(est)
    if align != "none":
        est.align(ref, correct_scale=align == "sim3")
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    unit = Unit.frames if rpe_unit == "frames" else Unit.meters
    rpe_t = metrics.RPE(metrics.PoseRelation.translation_part, rpe_delta, unit, all_pairs=False)
    rpe_r = metrics.RPE(metrics.PoseRelation.rotation_angle_deg, rpe_delta, unit, all_pairs=False)
    for m in (rpe_t, rpe_r):
        m.process_data((ref, est))
    xyz = ref.positions_xyz
    dist = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    return TrajectoryScore(align, np.asarray(est.timestamps), dist, np.asarray(ape.error), np.stack(est.poses_se3),
                           np.stack(ref.poses_se3), ape.get_all_statistics(), rpe_t.get_all_statistics(),
                           rpe_r.get_all_statistics(), float(rpe_delta), rpe_unit)


# -- plots ---------------------------------------------------------------------------------------------


def plot_trajectories(ground_truth: np.ndarray | None, estimates: Mapping[str, np.ndarray], path: str | Path,
                      loops: Sequence[tuple[np.ndarray, np.ndarray, bool]] = (),
                      title: str = "Trajectory (top view)") -> Path:
    """Top view: ground truth (grey, when given) and each named estimate ((N, 4, 4) or (N, 3)); ``loops``
    are ``(xyz_a, xyz_b, accepted)`` edges drawn green (accepted) or red (not)."""
    fig = Figure(figsize=(7.0, 6.0))
    ax = fig.add_subplot()
    if ground_truth is not None:
        gt = _xyz(ground_truth)
        ax.plot(gt[:, 0], gt[:, 1], color=MUTED_COLOUR, lw=2.5, label="ground truth")
    for colour, (name, est) in zip(_COLOURS, estimates.items()):
        xyz = _xyz(est)
        ax.plot(xyz[:, 0], xyz[:, 1], color=colour, lw=1.2, label=name)
    for a, b, ok in loops:
        ax.plot([a[0], b[0]], [a[1], b[1]], color=CORRECT_COLOUR if ok else WRONG_COLOUR, lw=0.8,
                alpha=0.6 if ok else 0.9)
    handles, _ = ax.get_legend_handles_labels()
    if loops:
        handles += [Line2D([], [], color=CORRECT_COLOUR, label="loop accepted"),
                    Line2D([], [], color=WRONG_COLOUR, label="loop not accepted")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_errors_along(scores: Mapping[str, TrajectoryScore], path: str | Path,
                      title: str = "Absolute trajectory error along the run") -> Path:
    """ATE (m) of each named estimate against the distance travelled, with its RMSE in the legend."""
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot()
    for colour, (name, s) in zip(_COLOURS, scores.items()):
        ax.plot(s.distance_m, s.ate_errors_m, color=colour, lw=1.2,
                label=f"{name} (RMSE {s.ate['rmse']:.2f} m, align {s.align})")
    ax.set_xlabel("distance travelled (m)")
    ax.set_ylabel("translation error (m)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _xyz(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses)
    return poses[:, :3, 3] if poses.ndim == 3 else poses[:, :3]
