"""Offline map building from a bag or any sample sequence (the CLI's ``build-map``): the same
:class:`Keyframer` and :class:`MapBuilder` the mapping node runs live."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .calibration import resolve_calibration
from .config import STUDENT_SPACE, NodeConfig, default_run_name
from .embedder import Embedder
from .keyframes import Keyframer
from .map_builder import DuplicateKeyframe, MapBuilder


def open_bag_sequence(path: str | Path, cfg: NodeConfig | None = None, run: str | None = None):
    """A :class:`~distilvpr_ros.data.rosbag_io.BagSequence` reading the node's topics, pairing camera and
    LiDAR within ``sync.slop_s`` and taking poses from odometry, as the mapping node does."""
    from ..data.rosbag_io import BagSequence, BagTopics

    cfg = cfg or NodeConfig()
    t = cfg.topics

    def absolute(name: str) -> str:
        return name if name.startswith("/") else "/" + name

    compressed = t.camera_compressed or t.camera.rstrip("/") + "/compressed"
    topics = BagTopics(image=absolute(t.camera), compressed_image=absolute(compressed), cloud=absolute(t.lidar),
                       odom=absolute(t.odom))
    return BagSequence(Path(path), topics, run=run, pair_tolerance=cfg.sync.slop_s, pose_source="odom")


def build_map_from_sequence(sequence: Any, teacher_ckpt: str | Path, student_ckpt: str | Path,
                            out_map: str | Path, cfg: NodeConfig | None = None, progress: bool = False,
                            on_keyframe: Callable[[Any], None] | None = None) -> dict:
    """Build (or, with ``cfg.map.resume``, extend) the map at ``out_map`` from one sequence, as the mapping
    node does live: keyframes gated by :class:`Keyframer` on the sequence's poses, teacher and student
    descriptors, keyframe views (image + LiDAR points + the calibration of
    :func:`~.calibration.resolve_calibration`), teacher-space loop closures verified by LiDAR registration.
    Frames without a finite pose or a LiDAR cloud are skipped. With ``submap.length_m`` > 0 the teacher reads
    the trailing submap over the earlier keyframes, as the node does; a frame without a pose starts a new
    odometry epoch, so no submap reaches across it.

    ``sequence``: a :class:`~distilvpr_ros.data.sample.Sequence` (``BagSequence`` from
    :func:`open_bag_sequence`, a ``SyntheticRun``, ...). ``on_keyframe`` is called with every
    :class:`~.map_builder.KeyframeResult` (loop proposals, their LiDAR verification and relative transform).
    Returns a summary dict (counts, loop closures, the map path).
    """
    from tqdm import tqdm

    cfg = (cfg or NodeConfig()).model_copy(deep=True)
    cfg.map.path = str(out_map)
    if not cfg.map.run:
        cfg.map.run = str(getattr(sequence, "run", "") or default_run_name())
    cfg.models.teacher_checkpoint = str(teacher_ckpt)
    teacher = Embedder.teacher_from_config(cfg.models)
    student = Embedder.from_checkpoint(student_ckpt, STUDENT_SPACE, cfg.models.num_threads)
    calibration = resolve_calibration(cfg.calibration, sequence)
    builder = MapBuilder.open(teacher, student, cfg, cfg.frames.map, calibration)
    keyframer = Keyframer(cfg.keyframes)
    skipped = {"no_pose": 0, "no_cloud": 0, "invalid": 0, "duplicate": 0}
    loops: list[list[float]] = []
    verification = {"enabled": cfg.verification.enabled, "proposed": 0, "verified": 0, "rejected": 0,
                    "rejections": {}, "fitness": []}
    first = len(builder.db)
    submap_scans: list[int] = []
    for i in tqdm(range(len(sequence)), desc=f"build map {builder.run}", unit="frame", disable=not progress):
        pose, stamp = np.asarray(sequence.poses[i]), float(sequence.timestamps[i])
        if not np.isfinite(pose).all():
            skipped["no_pose"] += 1  # an odometry gap: a new epoch, no submap reaches across it
            continue
        if not keyframer.check(pose, stamp).accept:
            continue
        sample = sequence[i]
        if sample.cloud is None:
            skipped["no_cloud"] += 1
            continue
        try:
            result = builder.add_keyframe(stamp, pose, sample.image, sample.cloud, odom_epoch=skipped["no_pose"])
        except DuplicateKeyframe:
            skipped["duplicate"] += 1
            continue
        except ValueError:
            skipped["invalid"] += 1
            continue
        keyframer.accept(pose, stamp)
        submap_scans.append(result.submap_scans)
        if on_keyframe is not None:
            on_keyframe(result)
        if result.proposed is not None:
            verification["proposed"] += 1
        if result.verification is not None:
            key = "verified" if result.verification.accepted else "rejected"
            verification[key] += 1
            if result.verification.accepted:
                verification["fitness"].append(result.verification.fitness)
            else:
                why = result.verification.reason.split(" (")[0]
                verification["rejections"][why] = verification["rejections"].get(why, 0) + 1
        if result.loop_closure is not None:
            loops.append(list(result.loop_closure))
    builder.save(out_map)
    fitness = verification.pop("fitness")
    verification["fitness_median"] = float(np.median(fitness)) if fitness else None
    submaps = {"length_m": cfg.submap.length_m, "breaks": builder.submaps.counts["breaks"],
               "cut_short": builder.submaps.counts["cut_short"],
               "scans_mean": float(np.mean(submap_scans)) if submap_scans else 0.0}
    return {"map": str(out_map), "run": builder.run, "frames": len(sequence), "keyframes": len(builder.db) - first,
            "map_size": len(builder.db), "skipped": skipped, "loop_closures": loops,
            "loop_closure_verification": verification, "calibration": calibration is not None, "submap": submaps}


def extend_map_anchored(sequence: Any, teacher_ckpt: str | Path, student_ckpt: str | Path, map_path: str | Path,
                        out_map: str | Path | None = None, cfg: NodeConfig | None = None, alignment: Any = None,
                        progress: bool = False) -> dict:
    """Localise a new session against the saved map at ``map_path`` and add its keyframes once verified
    matches anchor it: the session is mapped in its own odometry frame (:func:`build_map_from_sequence`, in
    a temporary folder beside ``out_map``), aligned to the saved map by LiDAR-verified cross-session matches
    (:func:`~.multisession.estimate_alignment`, ``alignment``: an :class:`~.multisession.AlignmentConfig`)
    and merged into its frame, saved atomically at ``out_map`` (default: ``map_path``). Too few anchors:
    :class:`~.multisession.AlignmentError` and the saved map stays as it was. Returns a summary."""
    import shutil
    import tempfile

    from .multisession import AlignmentConfig, estimate_alignment, load_map, require_alignment
    from ..mapping.merge import check_same_spaces, merge_databases

    cfg = (cfg or NodeConfig()).model_copy(deep=True)
    cfg.map.resume = False
    alignment = alignment or AlignmentConfig()
    out_map = Path(out_map) if out_map is not None else Path(map_path)
    base = load_map(map_path)
    out_map.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_map.name}.session-", dir=out_map.parent))
    try:
        session = build_map_from_sequence(sequence, teacher_ckpt, student_ckpt, tmp / "map", cfg, progress)
        new = load_map(tmp / "map")
        check_same_spaces(base, new, tmp / "map")
        found = estimate_alignment(base, new, alignment, cfg.verification.lidar)
        T = require_alignment(found, alignment)
        merged = merge_databases(base, new, T, tmp / "map")
        merged.save(out_map)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    session.pop("map")  # the temporary session map is gone; its keyframes are in out_map
    return {"map": str(out_map), "anchored": True, "session": session, "keyframes": len(merged),
            "alignment": found.as_dict()}


def localize_sequence(localizer: Any, sequence: Any, correct_m: float | None = None, stride: int = 1,
                      max_frames: int | None = None, pose_ok_m: float = 1.0, pose_ok_deg: float = 5.0,
                      progress: bool = False, odometry_drift: Any = None, drift_seed: int = 0) -> dict:
    """Run ``localizer`` (a :class:`~.localizer.Localizer`, verification on or off) over a sequence with ground-truth
    poses and score it (:func:`~distilvpr_ros.evaluation.verified_matches.score_verified_matches`): precision
    and recall before and after verification, metric pose error, re-ranking's R@1, plus latency and the most
    common rejection reasons. The localizer's ``run`` is set to the sequence's, so the temporal exclusion
    hides only the sequence's own keyframes. Each frame's ``motion`` since the previous frame the localizer saw
    comes from the sequence's poses (a bag's odometry), as the node takes it from its odometry topic, so
    ``rerank.consecutive`` > 1 and tracking (``rerank.tracking_min_inliers``) use the vehicle's motion. With
    ``odometry_drift`` (an :class:`~distilvpr_ros.data.world.config.OdometryDriftConfig`) that motion drifts as
    wheel odometry does (:func:`~distilvpr_ros.data.world.drift.drift_trajectory`, ``drift_seed``) instead of
    being exact. ``tracked`` counts the frames accepted through tracking."""
    from collections import Counter

    from tqdm import tqdm

    from ..config import CORRECT_M
    from ..data.geometry import invert
    from ..evaluation.replay_metrics import positives
    from ..evaluation.verified_matches import score_verified_matches

    correct_m = CORRECT_M if correct_m is None else correct_m
    localizer.run = str(getattr(sequence, "run", "") or "") or localizer.run
    localizer.reset()
    frames = list(range(0, len(sequence), max(1, int(stride))))[:max_frames]
    q = len(frames)
    top1 = np.full(q, -1, np.int64)
    accepted_before = np.zeros(q, bool)
    verified_ids = np.full(q, -1, np.int64)
    verified = np.zeros(q, bool)
    est = np.full((q, 4, 4), np.nan)
    true_poses = np.stack([np.asarray(sequence.poses[i], float) for i in frames]) if q else np.zeros((0, 4, 4))
    stamps = np.array([float(sequence.timestamps[i]) for i in frames])
    odom = true_poses
    if odometry_drift is not None and q > 1:
        from ..data.world.drift import drift_trajectory
        odom = drift_trajectory(true_poses, stamps, odometry_drift, drift_seed)
    seconds, reasons, tracked = [], Counter(), 0
    previous = None  # pose of the last frame the localizer saw (the start of the next frame's motion)
    for j, i in enumerate(tqdm(frames, desc=f"localize {localizer.run}", unit="frame", disable=not progress)):
        motion = None if previous is None else invert(previous) @ odom[j]
        try:
            out = localizer.localize(stamps[j], sequence[i].image, motion)
        except ValueError as e:  # unusable / low-quality frame: nothing matched
            reasons[f"frame rejected: {str(e).split(' (')[0]}"] += 1
            continue
        previous = odom[j]
        seconds.append(out.seconds)
        m = out.match
        top1[j] = m.best.id if m.best is not None else -1
        accepted_before[j] = m.accepted
        v = out.verification
        if v is None:
            verified[j], verified_ids[j] = m.accepted, top1[j]
            if out.pose is not None:
                est[j] = out.pose
        elif v.verified:
            verified[j], verified_ids[j], est[j] = True, v.id, v.pose
            tracked += v.tracked
        else:  # why the descriptor's top-1 was not verified (or why nothing was)
            top = next((c for c in v.candidates if c.descriptor_rank == 0), None)
            reasons[(top.reason if top is not None else v.reason).split(" (")[0]] += 1
    truth = positives(true_poses[:, :2, 3], localizer.db.positions, correct_m)
    scores = score_verified_matches(truth, top1, accepted_before, verified_ids, verified, est, true_poses,
                                    pose_ok_m, pose_ok_deg)
    ms = np.asarray(seconds) * 1e3
    scores.update(run=localizer.run, verification=localizer.verification.enabled, correct_m=float(correct_m),
                  top_k=min(localizer.matcher.cfg.top_k, localizer.verification.rerank.top_k),
                  latency_ms_p50=float(np.percentile(ms, 50)) if len(ms) else float("nan"),
                  latency_ms_p99=float(np.percentile(ms, 99)) if len(ms) else float("nan"),
                  rejections=dict(reasons.most_common(5)), tracked=int(tracked),
                  odometry="drift" if odometry_drift is not None else "exact")
    return scores
