"""Offline map building from a bag or any sample sequence (the CLI's ``build-map``): the same
:class:`Keyframer` and :class:`MapBuilder` the mapping node runs live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .calibration import resolve_calibration
from .config import STUDENT_SPACE, TEACHER_SPACE, NodeConfig, default_run_name
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
                            out_map: str | Path, cfg: NodeConfig | None = None, progress: bool = False) -> dict:
    """Build (or, with ``cfg.map.resume``, extend) the map at ``out_map`` from one sequence, as the mapping
    node does live: keyframes gated by :class:`Keyframer` on the sequence's poses, teacher and student
    descriptors, keyframe views (image + LiDAR points + the calibration of
    :func:`~.calibration.resolve_calibration`), teacher-space loop closures verified by LiDAR registration.
    Frames without a finite pose or a LiDAR cloud are skipped.

    ``sequence``: a :class:`~distilvpr_ros.data.sample.Sequence` (``BagSequence`` from
    :func:`open_bag_sequence`, a ``SyntheticRun``, ...). Returns a summary dict (counts, loop closures,
    the map path).
    """
    from tqdm import tqdm

    cfg = (cfg or NodeConfig()).model_copy(deep=True)
    cfg.map.path = str(out_map)
    if not cfg.map.run:
        cfg.map.run = str(getattr(sequence, "run", "") or default_run_name())
    teacher = Embedder.from_checkpoint(teacher_ckpt, TEACHER_SPACE, cfg.models.num_threads)
    student = Embedder.from_checkpoint(student_ckpt, STUDENT_SPACE, cfg.models.num_threads)
    calibration = resolve_calibration(cfg.calibration, sequence)
    builder = MapBuilder.open(teacher, student, cfg, cfg.frames.map, calibration)
    keyframer = Keyframer(cfg.keyframes)
    skipped = {"no_pose": 0, "no_cloud": 0, "invalid": 0, "duplicate": 0}
    loops: list[list[float]] = []
    verification = {"enabled": cfg.verification.enabled, "proposed": 0, "verified": 0, "rejected": 0,
                    "rejections": {}, "fitness": []}
    first = len(builder.db)
    for i in tqdm(range(len(sequence)), desc=f"build map {builder.run}", unit="frame", disable=not progress):
        pose, stamp = np.asarray(sequence.poses[i]), float(sequence.timestamps[i])
        if not np.isfinite(pose).all():
            skipped["no_pose"] += 1
            continue
        if not keyframer.check(pose, stamp).accept:
            continue
        sample = sequence[i]
        if sample.cloud is None:
            skipped["no_cloud"] += 1
            continue
        try:
            result = builder.add_keyframe(stamp, pose, sample.image, sample.cloud)
        except DuplicateKeyframe:
            skipped["duplicate"] += 1
            continue
        except ValueError:
            skipped["invalid"] += 1
            continue
        keyframer.accept(pose, stamp)
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
    return {"map": str(out_map), "run": builder.run, "frames": len(sequence), "keyframes": len(builder.db) - first,
            "map_size": len(builder.db), "skipped": skipped, "loop_closures": loops,
            "loop_closure_verification": verification, "calibration": calibration is not None}
