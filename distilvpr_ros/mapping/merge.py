"""Merging two place databases into one frame (multi-session maps).

:func:`merge_databases` appends map ``b``'s keyframes to map ``a``'s, their poses moved into ``a``'s frame by
``a_T_b`` (``world_a_T_world_b``): descriptors, stamps, frame ids, runs, keyframe views (LiDAR points stay in
the LiDAR frame, so they need no change) and per-run calibrations are kept. The maps must agree on their
embedding spaces (names, models, dimensions and metrics: :func:`check_same_spaces`) and share no run name
(:class:`~.errors.MapCompatibilityError` otherwise). Estimating ``a_T_b`` needs place matches verified by
LiDAR registration: :mod:`distilvpr_ros.pipeline.multisession`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.geometry import make_pose
from .database import PlaceDatabase
from .errors import MapCompatibilityError


def check_same_spaces(a: PlaceDatabase, b: PlaceDatabase, where: str | Path = "map b") -> None:
    """Raise :class:`MapCompatibilityError` unless ``a`` and ``b`` have the same spaces, models, dims and metrics."""
    if set(a.spaces) != set(b.spaces):
        raise MapCompatibilityError(Path(where), f"embedding spaces {sorted(b.spaces)} differ from the first map's "
                                                 f"{sorted(a.spaces)}")
    for name, sa in a.spaces.items():
        sb = b.spaces[name]
        for what in ("model_sha256", "dim", "metric"):
            if getattr(sa, what) != getattr(sb, what):
                raise MapCompatibilityError(Path(where), f"space {name!r}: {what} {getattr(sb, what)!r} differs from "
                                                         f"the first map's {getattr(sa, what)!r}; both maps must be "
                                                         "built with the same models")


def pose_matrices(db: PlaceDatabase) -> np.ndarray:
    """(N, 4, 4) ``world_T_base`` of every keyframe."""
    return np.stack([make_pose(p[:3], p[3:]) for p in db.poses]) if len(db) else np.zeros((0, 4, 4))


def merge_databases(a: PlaceDatabase, b: PlaceDatabase, a_T_b: np.ndarray | None = None,
                    where: str | Path = "map b") -> PlaceDatabase:
    """A new database: ``a``'s keyframes, then ``b``'s with poses ``a_T_b @ pose`` (module docstring)."""
    T = np.eye(4) if a_T_b is None else np.asarray(a_T_b, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"a_T_b must be a finite 4x4 transform, got shape {T.shape}")
    check_same_spaces(a, b, where)
    shared = sorted(set(a.runs) & set(b.runs))
    if shared:
        raise MapCompatibilityError(Path(where), f"runs {shared} are in both maps; a session is merged once "
                                                 "(rename the run when building the second map)")
    out = PlaceDatabase(a.spaces.values())
    for db, poses in ((a, pose_matrices(a)), (b, T @ pose_matrices(b))):
        if len(db) == 0:
            continue
        for run, calib in db.calibrations.items():
            out.set_calibration(run, calib)
        out.add_many(db.stamps, poses, db.frame_ids, db.runs, {name: db.descriptors(name) for name in db.spaces},
                     [db.view(i) for i in range(len(db))])
    return out
