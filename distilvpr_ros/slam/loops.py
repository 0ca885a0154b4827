"""Loop closures for the pose graph: one relative transform with its covariance, keyed by two stamps.

Conventions (the same as the verification's registration, ``target_T_source`` with the match as target):

* ``transform`` is ``match_T_query`` (4x4): the query keyframe's pose in the matched keyframe's frame,
  i.e. ``inv(world_T_match) @ world_T_query`` for perfect poses.
* ``covariance`` is 6x6 over the relative pose's ``x, y, z, rot_x, rot_y, rot_z`` (ROS order, as in
  ``geometry_msgs/PoseWithCovariance``), a perturbation in the query keyframe's frame; it must be
  symmetric and positive definite.

Files (:func:`load_loops` / :func:`save_loops`):

* JSON: ``{"loops": [{"t_query": s, "t_match": s, "transform": 4x4 rows, "covariance": 6x6 rows or 36}]}``
  (a bare list of such objects is accepted too);
* CSV with a header: ``t_query, t_match, x, y, z, qx, qy, qz, qw, c00 ... c55`` (transform as translation
  and an x, y, z, w quaternion, then the 36 covariance values row-major).

Reading never fails on one bad loop's *values* (NaN, a non-rigid transform, a covariance that is not
positive definite): those are kept and :func:`check_loop` says what is wrong, so the graph can reject
them with a reason. A file that cannot be parsed at all is a :class:`~distilvpr_ros.data.errors.DataError`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.errors import DataError
from ..data.geometry import make_pose, pose_to_xyz_quat

CSV_HEADER = ("t_query", "t_match", "x", "y", "z", "qx", "qy", "qz", "qw",
              *(f"c{i}{j}" for i in range(6) for j in range(6)))
ROTATION_TOLERANCE = 1e-4  # max |R^T R - I| and |det R - 1| of an acceptable rotation
SYMMETRY_TOLERANCE = 1e-9  # max |C - C^T| relative to max |C|


@dataclass
class LoopClosure:
    """A loop between the keyframes at ``t_match`` (earlier, usually) and ``t_query``."""

    t_query: float
    t_match: float
    transform: np.ndarray  # (4, 4) match_T_query
    covariance: np.ndarray  # (6, 6) x, y, z, rot_x, rot_y, rot_z
    meta: dict = field(default_factory=dict)  # anything else the source knew (score, inliers, source)

    def __post_init__(self):
        self.t_query, self.t_match = float(self.t_query), float(self.t_match)
        self.transform = np.asarray(self.transform, dtype=np.float64)
        self.covariance = np.asarray(self.covariance, dtype=np.float64)
        if self.covariance.size == 36:
            self.covariance = self.covariance.reshape(6, 6)


def check_loop(loop: LoopClosure) -> str | None:
    """Why ``loop`` cannot enter a pose graph (stamps, transform, covariance), or ``None`` when it can."""
    if not (np.isfinite(loop.t_query) and np.isfinite(loop.t_match)):
        return "stamps are not finite"
    if loop.t_query == loop.t_match:
        return "t_query equals t_match: a loop needs two keyframes"
    T, C = loop.transform, loop.covariance
    if T.shape != (4, 4):
        return f"transform has shape {T.shape}, expected (4, 4)"
    if not np.isfinite(T).all():
        return "transform has non-finite values"
    R = T[:3, :3]
    if (np.abs(R.T @ R - np.eye(3)).max() > ROTATION_TOLERANCE or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE
            or np.abs(T[3] - [0, 0, 0, 1]).max() > 0):
        return "transform is not rigid (rotation not orthonormal with det +1, or last row not 0 0 0 1)"
    if C.shape != (6, 6):
        return f"covariance has shape {C.shape}, expected (6, 6)"
    if not np.isfinite(C).all():
        return "covariance has non-finite values"
    if np.abs(C - C.T).max() > SYMMETRY_TOLERANCE * max(np.abs(C).max(), 1e-300):
        return "covariance is not symmetric"
    smallest = float(np.linalg.eigvalsh(C).min())
    if smallest <= 0 or np.linalg.cond(C) > 1e12:
        return f"covariance is not positive definite (smallest eigenvalue {smallest:.3g})"
    return None


def relative_transform(world_T_match: np.ndarray, world_T_query: np.ndarray) -> np.ndarray:
    """``match_T_query`` of two world poses (the loop's transform for perfect poses)."""
    return np.linalg.solve(world_T_match, world_T_query)


# -- files ---------------------------------------------------------------------------------------


def load_loops(path: str | Path) -> list[LoopClosure]:
    """Loop closures from a ``.json`` or ``.csv`` file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "loop-closure file not found")
    try:
        if path.suffix.lower() == ".csv":
            return _load_csv(path)
        data = json.loads(path.read_text())
        items = data["loops"] if isinstance(data, dict) else data
        return [LoopClosure(d["t_query"], d["t_match"], np.array(d["transform"], dtype=float),
                            np.array(d["covariance"], dtype=float),
                            {k: v for k, v in d.items() if k not in ("t_query", "t_match", "transform", "covariance")})
                for d in items]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"cannot read loop closures ({type(e).__name__}: {e}); expected "
                        "{'loops': [{t_query, t_match, transform 4x4, covariance 6x6}]} or CSV columns "
                        f"{', '.join(CSV_HEADER[:9])}, c00..c55") from None


def _load_csv(path: Path) -> list[LoopClosure]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:len(CSV_HEADER)]] != list(CSV_HEADER):
        raise ValueError(f"the header must start with {', '.join(CSV_HEADER[:9])}, c00, ..., c55")
    loops = []
    for row in rows[1:]:
        if not row:
            continue
        v = np.array(row[:len(CSV_HEADER)], dtype=float)
        if len(v) != len(CSV_HEADER):
            raise ValueError(f"a row has {len(v)} values, expected {len(CSV_HEADER)}")
        q = v[5:9]
        T = make_pose(v[2:5], q) if np.isfinite(q).all() and np.linalg.norm(q) > 0 else np.full((4, 4), np.nan)
        loops.append(LoopClosure(v[0], v[1], T, v[9:].reshape(6, 6)))
    return loops


def save_loops(path: str | Path, loops: list[LoopClosure]) -> Path:
    """Write loops as ``.json`` or ``.csv`` (by the suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        lines = [",".join(CSV_HEADER)]
        for lc in loops:
            ok = lc.transform.shape == (4, 4) and np.isfinite(lc.transform).all()
            xyz, q = pose_to_xyz_quat(lc.transform) if ok else (np.full(3, np.nan), np.full(4, np.nan))
            vals = [lc.t_query, lc.t_match, *xyz, *q, *lc.covariance.reshape(-1)]
            lines.append(",".join(repr(float(x)) for x in vals))
        path.write_text("\n".join(lines) + "\n")
    else:
        data = {"loops": [{"t_query": lc.t_query, "t_match": lc.t_match, "transform": lc.transform.tolist(),
                           "covariance": lc.covariance.tolist(), **lc.meta} for lc in loops]}
        path.write_text(json.dumps(data, indent=1) + "\n")
    return path
