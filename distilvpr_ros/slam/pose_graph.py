"""A pose graph over odometry keyframes and loop closures, optimised with gtsam under a robust kernel.

Graph (:func:`optimize_pose_graph`):

* one ``Pose3`` variable per odometry keyframe, initialised at the odometry pose;
* a prior on the first keyframe (the graph's frame is the odometry's);
* a between-factor per consecutive pair: the odometry's relative motion, with a diagonal covariance
  that grows with the step length (:class:`PoseGraphConfig` ``odom_*``) or the caller's own 6x6 per step;
* a between-factor per loop closure (:mod:`.loops` conventions: ``match_T_query``, ROS-order 6x6
  covariance), attached to the keyframes whose stamps lie within ``stamp_tolerance_s`` of the loop's.

Robust kernels (``robust``):

* ``gnc`` (default): graduated non-convexity with the truncated-least-squares loss (Yang et al. 2020,
  gtsam ``GncLMOptimizer``); odometry and prior factors are known inliers, each loop gets a weight in
  [0, 1]; a loop is *accepted* when its final weight is above 0.5, else *down-weighted* (out of the graph).
  The inlier threshold is the chi-square quantile ``gnc_inlier_probability`` of the loop's 6 DoF.
  GNC raises its non-convexity by ``gnc_mu_step`` per outer iteration (gtsam's default 1.4 takes about
  twice as many Levenberg-Marquardt solves as 2.0 for the same answer on the benchmark).
* ``cauchy`` / ``huber``: one Levenberg-Marquardt solve with a Cauchy / Huber M-estimator (``cauchy_k`` /
  ``huber_k``, on the whitened residual norm) on the loops only. These never remove a loop: a loop is
  *accepted* when its Mahalanobis residual at the optimum passes the chi-square gate
  (``accept_probability``), else it is reported *down-weighted* with the weight it ended with. Cauchy's
  influence fades for large residuals; Huber's stays constant, so a few confident wrong loops still bend
  the map under Huber (benchmarks/pose_graph.py measures both).
* ``none``: plain least squares (for comparison): every valid loop is accepted at full weight (its
  ``chi2`` still says how well it fits).

Loops that cannot enter the graph are *rejected* with a reason (:func:`.loops.check_loop`, an unknown
stamp); the graph is built and optimised without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import gtsam
import numpy as np
from pydantic import Field
from scipy.stats import chi2

from ..config import Section
from .loops import LoopClosure, check_loop

# ROS order (x, y, z, rot) -> gtsam's Pose3 tangent order (rot, x, y, z).
_ROS_TO_GTSAM = np.array([3, 4, 5, 0, 1, 2])
ACCEPTED, DOWN_WEIGHTED, REJECTED = "accepted", "down-weighted", "rejected"


class PoseGraphConfig(Section):
    """Pose-graph back-end: noise of the odometry, the robust kernel and loop association."""

    robust: Literal["gnc", "cauchy", "huber", "none"] = Field(
        "gnc", description="robust kernel on the loop closures: gnc (TLS, rejects), cauchy or huber (down-weight), "
        "none")
    gnc_inlier_probability: float = Field(
        0.99, gt=0, lt=1, description="GNC: a loop is an inlier when its residual is within this chi-square(6) "
        "quantile")
    gnc_mu_step: float = Field(2.0, gt=1, description="GNC: factor by which the non-convexity grows per iteration")
    cauchy_k: float = Field(3.0, gt=0, description="Cauchy: scale of the whitened residual norm of a loop")
    huber_k: float = Field(3.0, gt=0, description="Huber: threshold on the whitened residual norm of a loop")
    accept_probability: float = Field(
        0.99, gt=0, lt=1, description="huber/none: a loop is accepted when its residual chi-square(6) is below "
        "this quantile")
    odom_sigma_translation_m: float = Field(0.01, gt=0, description="odometry translation std per step, floor (m)")
    odom_sigma_translation_per_m: float = Field(
        0.03, ge=0, description="odometry translation std added per metre of the step (relative)")
    odom_sigma_rotation_deg: float = Field(0.05, gt=0, description="odometry rotation std per step, floor (deg)")
    odom_sigma_rotation_deg_per_m: float = Field(
        0.1, ge=0, description="odometry rotation std added per metre of the step (deg/m)")
    prior_sigma: float = Field(1e-6, gt=0, description="std of the prior holding the first keyframe (m, rad)")
    stamp_tolerance_s: float = Field(
        1e-3, ge=0, description="a loop stamp names the keyframe whose stamp is within this (s)")
    max_iterations: int = Field(100, ge=1, description="iterations of Levenberg-Marquardt (per GNC step)")


@dataclass
class LoopOutcome:
    """What the graph did with one input loop (same order as the input)."""

    index: int
    t_query: float
    t_match: float
    status: str  # accepted | down-weighted | rejected
    reason: str = ""  # why rejected (input) or down-weighted (kernel)
    weight: float | None = None  # final robust weight (GNC: [0, 1]; Huber: min(1, k / r)); None if rejected
    chi2: float | None = None  # Mahalanobis residual at the optimum (before any kernel)
    chi2_initial: float | None = None  # ... at the odometry (initial) poses
    keyframes: tuple[int, int] | None = None  # (match, query) keyframe indices

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class PoseGraphResult:
    stamps: np.ndarray  # (N,)
    initial: np.ndarray  # (N, 4, 4) odometry poses
    poses: np.ndarray  # (N, 4, 4) optimised poses
    loops: list[LoopOutcome]
    robust: str
    seconds: float  # graph building + optimisation
    error_initial: float  # total (non-robust) graph error 0.5 * sum chi2 at the odometry poses, inliers only
    error_final: float
    counts: dict = field(default_factory=dict)

    def loop_counts(self) -> dict:
        return {s: sum(o.status == s for o in self.loops) for s in (ACCEPTED, DOWN_WEIGHTED, REJECTED)}


def odometry_covariance(step: np.ndarray, cfg: PoseGraphConfig) -> np.ndarray:
    """6x6 (gtsam order) covariance of an odometry step ``step`` (4x4), growing with its length."""
    d = float(np.linalg.norm(step[:3, 3]))
    st = cfg.odom_sigma_translation_m + cfg.odom_sigma_translation_per_m * d
    sr = np.deg2rad(cfg.odom_sigma_rotation_deg + cfg.odom_sigma_rotation_deg_per_m * d)
    return np.diag([sr**2] * 3 + [st**2] * 3)


def _keyframe_of(stamps: np.ndarray, t: float, tol: float) -> tuple[int, float]:
    i = int(np.clip(np.searchsorted(stamps, t), 1, len(stamps) - 1)) if len(stamps) > 1 else 0
    if len(stamps) > 1 and abs(stamps[i - 1] - t) <= abs(stamps[i] - t):
        i -= 1
    return i, abs(float(stamps[i]) - t)


def _residual_chi2(values: gtsam.Values, i: int, j: int, measured: gtsam.Pose3, info: np.ndarray) -> float:
    e = gtsam.Pose3.Logmap(measured.between(values.atPose3(i).between(values.atPose3(j))))
    return float(e @ info @ e)


def _check_odometry(stamps: np.ndarray, poses: np.ndarray) -> None:
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or stamps.shape != (len(poses),):
        raise ValueError(f"odometry needs (N,) stamps and (N, 4, 4) poses, got {stamps.shape} and {poses.shape}")
    if len(poses) < 2:
        raise ValueError("odometry needs at least 2 keyframes")
    if not (np.isfinite(stamps).all() and np.isfinite(poses).all()):
        raise ValueError("odometry stamps and poses must be finite")
    if np.any(np.diff(stamps) <= 0):
        raise ValueError("odometry stamps must be strictly increasing")


def optimize_pose_graph(stamps: np.ndarray, poses: np.ndarray, loops: list[LoopClosure],
                        cfg: PoseGraphConfig | None = None,
                        odom_covariances: np.ndarray | None = None) -> PoseGraphResult:
    """Optimise odometry keyframes (``stamps`` (N,), ``poses`` (N, 4, 4)) with ``loops`` (module docstring).

    ``odom_covariances`` (N-1, 6, 6), ROS order, replaces the configured odometry noise per step.
    Raises ``ValueError`` for unusable odometry; bad loops are rejected in the result instead.
    """
    cfg = cfg or PoseGraphConfig()
    stamps = np.asarray(stamps, dtype=np.float64)
    poses = np.asarray(poses, dtype=np.float64)
    _check_odometry(stamps, poses)
    t0 = time.perf_counter()
    n = len(poses)
    graph, initial = gtsam.NonlinearFactorGraph(), gtsam.Values()
    for k in range(n):
        initial.insert(k, gtsam.Pose3(poses[k]))
    graph.add(gtsam.PriorFactorPose3(0, gtsam.Pose3(poses[0]), gtsam.noiseModel.Isotropic.Sigma(6, cfg.prior_sigma)))
    for k in range(1, n):
        step = np.linalg.solve(poses[k - 1], poses[k])
        cov = odometry_covariance(step, cfg) if odom_covariances is None else \
            np.asarray(odom_covariances[k - 1], dtype=float)[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
        graph.add(gtsam.BetweenFactorPose3(k - 1, k, gtsam.Pose3(step), gtsam.noiseModel.Gaussian.Covariance(cov)))
    n_known = graph.size()

    outcomes: list[LoopOutcome] = []
    in_graph: list[tuple[LoopOutcome, gtsam.Pose3, np.ndarray]] = []  # (outcome, measurement, information)
    kernel = {"huber": lambda: gtsam.noiseModel.mEstimator.Huber.Create(cfg.huber_k),
              "cauchy": lambda: gtsam.noiseModel.mEstimator.Cauchy.Create(cfg.cauchy_k)}.get(cfg.robust, lambda: None)()
    for idx, lc in enumerate(loops):
        out = LoopOutcome(idx, lc.t_query, lc.t_match, REJECTED)
        outcomes.append(out)
        reason = check_loop(lc)
        if reason is None:
            (i, di), (j, dj) = (_keyframe_of(stamps, t, cfg.stamp_tolerance_s) for t in (lc.t_match, lc.t_query))
            for name, t, dist in (("t_match", lc.t_match, di), ("t_query", lc.t_query, dj)):
                if dist > cfg.stamp_tolerance_s and reason is None:
                    reason = (f"{name}={t:.6f} names no keyframe (nearest is {dist:.3g} s away, tolerance "
                              f"{cfg.stamp_tolerance_s} s)")
            if reason is None and i == j:
                reason = f"t_match and t_query name the same keyframe {i}"
        if reason is not None:
            out.reason = reason
            continue
        cov = lc.covariance[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
        noise = gtsam.noiseModel.Gaussian.Covariance(cov)
        if kernel is not None:
            noise = gtsam.noiseModel.Robust.Create(kernel, noise)
        measured = gtsam.Pose3(lc.transform)
        graph.add(gtsam.BetweenFactorPose3(i, j, measured, noise))
        out.keyframes = (i, j)
        info = np.linalg.inv(cov)
        out.chi2_initial = _residual_chi2(initial, i, j, measured, info)
        in_graph.append((out, measured, info))

    lm = gtsam.LevenbergMarquardtParams()
    lm.setMaxIterations(cfg.max_iterations)
    if cfg.robust == "gnc" and in_graph:
        params = gtsam.GncLMParams(lm)
        params.setLossType(gtsam.GncLossType.TLS)
        params.setKnownInliers(list(range(n_known)))
        params.setLambdaStep(cfg.gnc_mu_step)
        opt = gtsam.GncLMOptimizer(graph, initial, params)
        opt.setInlierCostThresholdsAtProbability(cfg.gnc_inlier_probability)
        result = opt.optimize()
        weights = np.asarray(opt.getWeights())[n_known:]
    else:
        result = gtsam.LevenbergMarquardtOptimizer(graph, initial, lm).optimize()
        weights = None
    seconds = time.perf_counter() - t0

    gate = float(chi2.ppf(cfg.accept_probability, 6))
    for m, (out, measured, info) in enumerate(in_graph):
        out.chi2 = _residual_chi2(result, *out.keyframes, measured, info)
        if weights is not None:
            out.weight = float(weights[m])
            ok = out.weight > 0.5
            why = f"GNC weight {out.weight:.2f} (residual chi2 {out.chi2:.3g})"
        else:
            out.weight = 1.0 if kernel is None else float(kernel.weight(np.sqrt(out.chi2)))
            ok = kernel is None or out.chi2 <= gate  # without a kernel every loop is in the graph at full weight
            why = f"residual chi2 {out.chi2:.3g} > {gate:.3g} (weight {out.weight:.2g})"
        out.status = ACCEPTED if ok else DOWN_WEIGHTED
        out.reason = "" if ok else why

    accepted = [o for o in in_graph if o[0].status == ACCEPTED]
    err0 = _inlier_error(graph, initial, n_known, accepted)
    err1 = _inlier_error(graph, result, n_known, accepted)
    res = PoseGraphResult(stamps, poses, np.stack([result.atPose3(k).matrix() for k in range(n)]), outcomes,
                          cfg.robust, seconds, err0, err1)
    res.counts = {"keyframes": n, "loops": len(loops), **res.loop_counts()}
    return res


def _inlier_error(graph: gtsam.NonlinearFactorGraph, values: gtsam.Values, n_known: int, accepted: list) -> float:
    """0.5 * chi2 of the odometry, the prior and the accepted loops (kernels off), at ``values``."""
    known = sum(graph.at(k).error(values) for k in range(n_known))
    return float(known + 0.5 * sum(_residual_chi2(values, *o.keyframes, m, info) for o, m, info in accepted))
