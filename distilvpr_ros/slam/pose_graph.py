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
  Pre-screen (``gnc_prescreen_factor`` > 0, the default): a Cauchy solve first (below); loops whose
  residual there exceeds ``gnc_prescreen_factor`` times the acceptance gate are *down-weighted* before GNC
  (reason ``pre-screen``), and GNC starts from the Cauchy solution with the rest. Gross outliers would
  otherwise set GNC's initial non-convexity so low that it needs ~17 outer iterations instead of ~0-15
  (1.7 s instead of ~0.2 s CPU for 1000 keyframes, 100 right + 10 wrong loops; benchmarks/pose_graph.py).
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
    gnc_mu_step: float = Field(
        2.0, gt=1, le=100, description="GNC: factor by which the non-convexity grows per iteration")
    gnc_prescreen_factor: float = Field(
        10.0, ge=0, le=1e6, description="GNC: loops whose residual chi-square after a Cauchy solve exceeds this "
        "multiple of the acceptance gate leave the graph before GNC, which starts from that solve (0: no pre-screen)")
    cauchy_k: float = Field(3.0, gt=0, le=1e3, description="Cauchy: scale of the whitened residual norm of a loop")
    huber_k: float = Field(3.0, gt=0, le=1e3, description="Huber: threshold on the whitened residual norm of a loop")
    accept_probability: float = Field(
        0.99, gt=0, lt=1, description="huber/none: a loop is accepted when its residual chi-square(6) is below "
        "this quantile")
    odom_sigma_translation_m: float = Field(
        0.01, gt=0, le=100, description="odometry translation std per step, floor (m)")
    odom_sigma_translation_per_m: float = Field(
        0.03, ge=0, le=10, description="odometry translation std added per metre of the step (relative)")
    odom_sigma_rotation_deg: float = Field(
        0.05, gt=0, le=180, description="odometry rotation std per step, floor (deg)")
    odom_sigma_rotation_deg_per_m: float = Field(
        0.1, ge=0, le=180, description="odometry rotation std added per metre of the step (deg/m)")
    prior_sigma: float = Field(1e-6, gt=0, le=1, description="std of the prior holding the first keyframe (m, rad)")
    stamp_tolerance_s: float = Field(
        1e-3, ge=0, le=60, description="a loop stamp names the keyframe whose stamp is within this (s)")
    max_iterations: int = Field(100, ge=1, le=10_000, description="iterations of Levenberg-Marquardt (per GNC step)")


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


def _keyframe_of(stamps: np.ndarray, t: float) -> tuple[int, float]:
    """Index of the keyframe nearest to ``t`` and how far (s) its stamp is."""
    i = int(np.clip(np.searchsorted(stamps, t), 1, len(stamps) - 1))
    if abs(stamps[i - 1] - t) <= abs(stamps[i] - t):
        i -= 1
    return i, abs(float(stamps[i]) - t)


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
    if odom_covariances is not None:
        odom_covariances = np.asarray(odom_covariances, dtype=np.float64)
        if odom_covariances.shape != (len(poses) - 1, 6, 6) or not np.isfinite(odom_covariances).all():
            raise ValueError(f"odom_covariances must be finite with shape ({len(poses) - 1}, 6, 6), "
                             f"got {odom_covariances.shape}")
        if np.linalg.eigvalsh(0.5 * (odom_covariances + odom_covariances.transpose(0, 2, 1))).min() <= 0:
            raise ValueError("odom_covariances must be positive definite")
    t0 = time.perf_counter()
    n = len(poses)
    odometry, initial = gtsam.NonlinearFactorGraph(), gtsam.Values()
    for k in range(n):
        initial.insert(k, gtsam.Pose3(poses[k]))
    odometry.add(gtsam.PriorFactorPose3(0, gtsam.Pose3(poses[0]), gtsam.noiseModel.Isotropic.Sigma(6, cfg.prior_sigma)))
    for k in range(1, n):
        step = np.linalg.solve(poses[k - 1], poses[k])
        cov = odometry_covariance(step, cfg) if odom_covariances is None else \
            odom_covariances[k - 1][np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
        odometry.add(gtsam.BetweenFactorPose3(k - 1, k, gtsam.Pose3(step), gtsam.noiseModel.Gaussian.Covariance(cov)))

    outcomes: list[LoopOutcome] = []
    in_graph: list[_GraphLoop] = []
    for idx, lc in enumerate(loops):
        out = LoopOutcome(idx, lc.t_query, lc.t_match, REJECTED)
        outcomes.append(out)
        reason = check_loop(lc)
        if reason is None:
            (i, di), (j, dj) = (_keyframe_of(stamps, t) for t in (lc.t_match, lc.t_query))
            for name, t, dist in (("t_match", lc.t_match, di), ("t_query", lc.t_query, dj)):
                if dist > cfg.stamp_tolerance_s and reason is None:
                    reason = (f"{name}={t:.6f} names no keyframe (nearest is {dist:.3g} s away, tolerance "
                              f"{cfg.stamp_tolerance_s} s)")
            if reason is None and i == j:
                reason = f"t_match and t_query name the same keyframe {i}"
        if reason is not None:
            out.reason = reason
            continue
        out.keyframes = (i, j)
        gl = _GraphLoop(out, gtsam.Pose3(lc.transform), lc.covariance[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)])
        out.chi2_initial = gl.chi2(initial)
        in_graph.append(gl)

    gate = float(chi2.ppf(cfg.accept_probability, 6))
    if cfg.robust == "gnc" and in_graph:
        result = _optimize_gnc(odometry, initial, in_graph, cfg, gate)
    else:
        kernel = _kernel(cfg)
        result = _lm(_with_loops(odometry, in_graph, kernel), initial, cfg)
        for gl in in_graph:
            out = gl.outcome
            out.chi2 = gl.chi2(result)
            out.weight = 1.0 if kernel is None else float(kernel.weight(np.sqrt(out.chi2)))
            ok = kernel is None or out.chi2 <= gate  # without a kernel every loop is in the graph at full weight
            out.status = ACCEPTED if ok else DOWN_WEIGHTED
            out.reason = "" if ok else f"residual chi2 {out.chi2:.3g} > {gate:.3g} (weight {out.weight:.2g})"
    seconds = time.perf_counter() - t0

    accepted = [gl for gl in in_graph if gl.outcome.status == ACCEPTED]
    res = PoseGraphResult(stamps, poses, np.stack([result.atPose3(k).matrix() for k in range(n)]), outcomes,
                          cfg.robust, seconds, _inlier_error(odometry, initial, accepted),
                          _inlier_error(odometry, result, accepted))
    res.counts = {"keyframes": n, "loops": len(loops), **res.loop_counts()}
    return res


@dataclass
class _GraphLoop:
    """A valid loop on its way into the graph: its outcome, measurement and covariance (gtsam order)."""

    outcome: LoopOutcome
    measured: gtsam.Pose3
    covariance: np.ndarray

    def __post_init__(self):
        self.information = np.linalg.inv(self.covariance)

    def chi2(self, values: gtsam.Values) -> float:
        """Mahalanobis residual of the loop at ``values``."""
        i, j = self.outcome.keyframes
        e = gtsam.Pose3.Logmap(self.measured.between(values.atPose3(i).between(values.atPose3(j))))
        return float(e @ self.information @ e)

    def factor(self, kernel=None) -> gtsam.BetweenFactorPose3:
        noise = gtsam.noiseModel.Gaussian.Covariance(self.covariance)
        if kernel is not None:
            noise = gtsam.noiseModel.Robust.Create(kernel, noise)
        return gtsam.BetweenFactorPose3(*self.outcome.keyframes, self.measured, noise)


def _kernel(cfg: PoseGraphConfig, name: str | None = None):
    name = name or cfg.robust
    if name == "huber":
        return gtsam.noiseModel.mEstimator.Huber.Create(cfg.huber_k)
    if name == "cauchy":
        return gtsam.noiseModel.mEstimator.Cauchy.Create(cfg.cauchy_k)
    return None


def _with_loops(odometry: gtsam.NonlinearFactorGraph, loops: list[_GraphLoop],
                kernel=None) -> gtsam.NonlinearFactorGraph:
    graph = gtsam.NonlinearFactorGraph(odometry)
    for gl in loops:
        graph.add(gl.factor(kernel))
    return graph


def _lm(graph: gtsam.NonlinearFactorGraph, initial: gtsam.Values, cfg: PoseGraphConfig) -> gtsam.Values:
    return gtsam.LevenbergMarquardtOptimizer(graph, initial, _lm_params(cfg)).optimize()


def _lm_params(cfg: PoseGraphConfig) -> gtsam.LevenbergMarquardtParams:
    lm = gtsam.LevenbergMarquardtParams()
    lm.setMaxIterations(cfg.max_iterations)
    return lm


def _optimize_gnc(odometry: gtsam.NonlinearFactorGraph, initial: gtsam.Values, loops: list[_GraphLoop],
                  cfg: PoseGraphConfig, gate: float) -> gtsam.Values:
    """GNC-TLS over the loops (odometry and prior known inliers), after the optional Cauchy pre-screen."""
    start, active = initial, list(loops)
    if cfg.gnc_prescreen_factor > 0:
        start = _lm(_with_loops(odometry, loops, _kernel(cfg, "cauchy")), initial, cfg)
        limit = cfg.gnc_prescreen_factor * gate
        active = []
        for gl in loops:
            c = gl.chi2(start)
            if c > limit:
                gl.outcome.weight, gl.outcome.status = 0.0, DOWN_WEIGHTED
                gl.outcome.reason = f"pre-screen: residual chi2 {c:.3g} after the Cauchy solve > {limit:.3g}"
            else:
                active.append(gl)
    if active:
        params = gtsam.GncLMParams(_lm_params(cfg))
        params.setLossType(gtsam.GncLossType.TLS)
        params.setKnownInliers(list(range(odometry.size())))
        params.setLambdaStep(cfg.gnc_mu_step)
        opt = gtsam.GncLMOptimizer(_with_loops(odometry, active), start, params)
        opt.setInlierCostThresholdsAtProbability(cfg.gnc_inlier_probability)
        result = opt.optimize()
        weights = np.asarray(opt.getWeights())[odometry.size():]
    else:
        result, weights = _lm(odometry, start, cfg), []
    for gl, w in zip(active, weights):
        out = gl.outcome
        out.weight = float(w)
        out.status = ACCEPTED if w > 0.5 else DOWN_WEIGHTED
        out.reason = "" if w > 0.5 else f"GNC weight {w:.2f}"
    for gl in loops:
        gl.outcome.chi2 = gl.chi2(result)
        if gl.outcome.status == DOWN_WEIGHTED:
            gl.outcome.reason += f" (residual chi2 at the optimum {gl.outcome.chi2:.3g})"
    return result


def _inlier_error(odometry: gtsam.NonlinearFactorGraph, values: gtsam.Values, accepted: list[_GraphLoop]) -> float:
    """0.5 * chi2 of the odometry, the prior and the accepted loops (kernels off), at ``values``."""
    return float(odometry.error(values) + 0.5 * sum(gl.chi2(values) for gl in accepted))
