"""Which pairs of frames share visible structure: ray-cast ground truth of a world, or a pose-only proxy.

A forward camera with a 90 degree field of view sees only what lies ahead: two frames at the same place
facing opposite ways mostly see different things, so no camera descriptor can match them. Evaluation
(the ``visible`` subset) and distillation (relations restricted to pairs that share structure) need to
know which pairs can be matched from the images at all.

**World ground truth** (synthetic worlds). :mod:`.world.visibility` ray-casts every frame's camera
view (a 128 x 96 ray grid, the world's intrinsics and extrinsics) into the run's static scene and keeps
the occupied 1 m voxels more than 0.3 m above the ground within 30 m that the camera sees
(:class:`~.world.visibility.RayCastParams`). Frame ``b`` *sees* frame ``a``'s structure when it sees at
least ``min_shared`` (10 %) of ``a``'s visible voxels: ``|V_a & V_b| >= min_shared * |V_a|`` (so a frame
that sees nothing shares nothing). The sets are computed once per world and cached beside it,
``<world>/visibility-<hash>.npz`` (no pickle; written atomically), where the hash covers the world's
config and the ray-casting parameters, so a changed world or parameter computes a new file.
:func:`world_voxels` loads or computes it.

**Pose-only proxy** (bags and datasets without a world), :func:`pose_proxy_mask`: ``b`` sees ``a``'s
structure when they are at most ``proxy_distance_m`` (25 m) apart and their camera headings differ by
at most ``proxy_heading_deg`` (90 degrees); with ``proxy_frustum``, the point ``proxy_view_point_m``
(10 m) ahead of ``a``'s camera must also lie inside ``b``'s horizontal field of view
(``proxy_hfov_deg``, 90 degrees). Headings are the yaw of the pose (``world_T_base``) plus
``camera_yaw_deg`` (0: a forward camera).

:class:`VisibleStructure` puts both behind one object for the frames of some sequences: the world
cache when all sequences are runs of one generated world, the proxy otherwise. ``mask(frames_a,
frames_b)`` is the pairwise boolean "shares visible structure" matrix of a batch (distillation);
``matches(query, database)`` the query x database matrix (evaluation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence as TypingSequence

import numpy as np
from scipy import sparse

from ..config import CORRECT_M
from ..utils.fileio import atomic_write, recovered_path
from .sample import Sequence
from .world.layout import WORLD_JSON
from .world.visibility import RayCastParams

log = logging.getLogger(__name__)

#: Version of the cache file layout (part of the key).
CACHE_VERSION = 1
CACHE_PREFIX = "visibility-"
#: Sources a :class:`VisibleStructure` reports.
WORLD, PROXY = "world ray casting", "pose proxy"


@dataclass(frozen=True)
class VisibilityConfig(RayCastParams):
    """Parameters of "shares visible structure" (module doc): the ray casting's, then the sharing rule's."""

    min_shared: float = 0.10
    proxy_distance_m: float = CORRECT_M
    proxy_heading_deg: float = 90.0
    proxy_frustum: bool = False
    proxy_view_point_m: float = 10.0
    proxy_hfov_deg: float = 90.0
    camera_yaw_deg: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.min_shared <= 1:
            raise ValueError(f"min_shared must be in (0, 1], got {self.min_shared}")
        if self.proxy_distance_m <= 0 or not 0 <= self.proxy_heading_deg <= 180:
            raise ValueError("proxy_distance_m must be > 0 and proxy_heading_deg in [0, 180]")

    def ray_cast_params(self) -> dict:
        """The parameters the world's voxel sets depend on (the cache key's)."""
        return {f.name: getattr(self, f.name) for f in fields(RayCastParams)}


# ------------------------------------------------------------------------------------------------
# Per-frame voxel sets of a world, and their cache
# ------------------------------------------------------------------------------------------------

@dataclass
class FrameVoxels:
    """The visible voxels of every frame of a world, as a sparse frame x voxel incidence matrix.

    Row ``run_starts[r] + k`` is frame (file index) ``k`` of run ``runs[r]``; its voxels are
    ``voxels[voxel_index[indptr[row]:indptr[row + 1]]]`` (voxel coordinates, ``floor(x / voxel_m)``).
    """

    runs: tuple[str, ...]
    run_starts: np.ndarray  # (R + 1,) int64
    indptr: np.ndarray  # (F + 1,) int64
    voxel_index: np.ndarray  # (nnz,) int32, columns into ``voxels``
    voxels: np.ndarray  # (V, 3) int32
    key: dict = field(default_factory=dict)

    def __post_init__(self):
        self._matrix = sparse.csr_matrix(
            (np.ones(len(self.voxel_index), dtype=np.int32), self.voxel_index, self.indptr),
            shape=(len(self.indptr) - 1, len(self.voxels)))
        self._run = {name: r for r, name in enumerate(self.runs)}

    @classmethod
    def from_sets(cls, runs: TypingSequence[str], indptrs: TypingSequence[np.ndarray],
                  voxel_sets: TypingSequence[np.ndarray], key: dict | None = None) -> "FrameVoxels":
        """From per-run ``indptr`` and voxel coordinates (:func:`~.world.visibility.visible_voxel_sets`)."""
        coords = np.concatenate(list(voxel_sets)) if voxel_sets else np.zeros((0, 3), np.int32)
        voxels, inverse = np.unique(coords.reshape(-1, 3), axis=0, return_inverse=True)
        counts = np.concatenate([np.diff(p) for p in indptrs]) if indptrs else np.zeros(0, np.int64)
        run_starts = np.concatenate([[0], np.cumsum([len(p) - 1 for p in indptrs])]).astype(np.int64)
        return cls(tuple(runs), run_starts, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   inverse.reshape(-1).astype(np.int32), voxels.astype(np.int32), dict(key or {}))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def rows(self, run: str, frames) -> np.ndarray:
        """Rows of frames (file indices) of a run."""
        if run not in self._run:
            raise KeyError(f"run {run!r} is not in the visibility cache (runs: {list(self.runs)})")
        r = self._run[run]
        frames = np.asarray(frames, dtype=np.int64)
        n = self.run_starts[r + 1] - self.run_starts[r]
        if frames.size and (frames.min() < 0 or frames.max() >= n):
            raise IndexError(f"run {run!r} has {n} frames in the visibility cache")
        return self.run_starts[r] + frames

    def counts(self, rows) -> np.ndarray:
        """Number of visible voxels of each row."""
        rows = np.asarray(rows, dtype=np.int64)
        return (self.indptr[rows + 1] - self.indptr[rows]).astype(np.int64)

    def voxels_of(self, row: int) -> np.ndarray:
        """Voxel coordinates (``K x 3``) one row sees."""
        return self.voxels[self.voxel_index[self.indptr[row]:self.indptr[row + 1]]]

    def shared(self, rows_a, rows_b) -> np.ndarray:
        """``(A, B)`` number of voxels both rows see."""
        a = self._matrix[np.asarray(rows_a, dtype=np.int64)]
        b = self._matrix[np.asarray(rows_b, dtype=np.int64)]
        return np.asarray((a @ b.T).toarray(), dtype=np.int64)

    def seen_fraction(self, rows_a, rows_b) -> np.ndarray:
        """``(A, B)``: the fraction of row ``a``'s visible voxels that row ``b`` sees (0 when ``a`` sees none)."""
        shared = self.shared(rows_a, rows_b)
        return shared / np.maximum(self.counts(rows_a), 1)[:, None]

    def save(self, path: Path) -> None:
        """Atomically write an ``.npz`` (no pickle; the key as JSON text)."""
        path = Path(path)
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, runs=np.array(self.runs, dtype=str), run_starts=self.run_starts,
                                    indptr=self.indptr, voxel_index=self.voxel_index, voxels=self.voxels,
                                    key=np.array(json.dumps(self.key, sort_keys=True)))

    @classmethod
    def load(cls, path: Path) -> "FrameVoxels":
        with np.load(recovered_path(path), allow_pickle=False) as z:
            return cls(tuple(str(r) for r in z["runs"]), z["run_starts"].astype(np.int64),
                       z["indptr"].astype(np.int64), z["voxel_index"].astype(np.int32),
                       z["voxels"].astype(np.int32), json.loads(str(z["key"])))


def world_cache_key(root: Path, cfg: VisibilityConfig = VisibilityConfig()) -> dict:
    """What a world's voxel sets depend on: the world's config (hashed) and the ray-casting parameters."""
    from .synthetic import read_world_meta

    meta = read_world_meta(Path(root))
    config = json.dumps(meta["config"], sort_keys=True)
    return {"kind": "visible_voxels", "version": CACHE_VERSION,
            "world_config_sha256": hashlib.sha256(config.encode()).hexdigest(), **cfg.ray_cast_params()}


def cache_path(root: Path, cfg: VisibilityConfig = VisibilityConfig()) -> Path:
    """``<world>/visibility-<hash of the key>.npz``."""
    text = json.dumps(world_cache_key(root, cfg), sort_keys=True)
    return Path(root) / f"{CACHE_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"


def world_voxels(root: Path, cfg: VisibilityConfig = VisibilityConfig(), *, compute: bool = True,
                 write: bool = True, threads: int = 1, progress: bool = False) -> FrameVoxels | None:
    """The world's per-frame visible voxels: from its cache, else ray-cast now (``compute``) and cached
    (``write``; a world folder that cannot be written keeps the result in memory only, with a warning).

    Returns None when there is no cache and ``compute`` is False.
    """
    from .world.visibility import world_visible_voxels  # looked up per call: tests replace the ray caster

    root = Path(root)
    key = world_cache_key(root, cfg)
    path = cache_path(root, cfg)
    if recovered_path(path).is_file():
        voxels = FrameVoxels.load(path)
        if voxels.key == key:
            return voxels
        log.warning("%s holds another key; recomputing", path)
    if not compute:
        return None
    runs, indptrs, sets = world_visible_voxels(root, RayCastParams(**cfg.ray_cast_params()), threads=threads,
                                               progress=progress)
    voxels = FrameVoxels.from_sets(runs, indptrs, sets, key)
    if write:
        try:
            voxels.save(path)
        except OSError as e:
            log.warning("could not write the visibility cache %s (%s); keeping it in memory", path, e)
    return voxels


# ------------------------------------------------------------------------------------------------
# Pose-only proxy
# ------------------------------------------------------------------------------------------------

def camera_headings(poses: np.ndarray, camera_yaw_deg: float = 0.0) -> np.ndarray:
    """Heading (rad) of the camera of each ``world_T_base`` pose: the body's yaw plus the camera's yaw."""
    poses = np.asarray(poses, dtype=float).reshape(-1, 4, 4)
    return np.arctan2(poses[:, 1, 0], poses[:, 0, 0]) + np.deg2rad(camera_yaw_deg)


def pose_proxy_mask(poses_a: np.ndarray, poses_b: np.ndarray,
                    cfg: VisibilityConfig = VisibilityConfig()) -> np.ndarray:
    """``(A, B)`` pose-only estimate of "frame ``b`` sees frame ``a``'s structure" (module doc).

    Within ``proxy_distance_m`` (planar) and camera headings within ``proxy_heading_deg``; with
    ``proxy_frustum`` also ``a``'s view point (``proxy_view_point_m`` ahead of it) inside ``b``'s
    horizontal field of view, in front of ``b``.
    """
    poses_a = np.asarray(poses_a, dtype=float).reshape(-1, 4, 4)
    poses_b = np.asarray(poses_b, dtype=float).reshape(-1, 4, 4)
    xy_a, xy_b = poses_a[:, :2, 3], poses_b[:, :2, 3]
    yaw_a, yaw_b = camera_headings(poses_a, cfg.camera_yaw_deg), camera_headings(poses_b, cfg.camera_yaw_deg)
    near = np.linalg.norm(xy_a[:, None] - xy_b[None], axis=-1) <= cfg.proxy_distance_m
    turn = np.abs(np.angle(np.exp(1j * (yaw_a[:, None] - yaw_b[None]))))
    mask = near & (turn <= np.deg2rad(cfg.proxy_heading_deg) + 1e-9)
    if cfg.proxy_frustum:
        view = xy_a + cfg.proxy_view_point_m * np.stack([np.cos(yaw_a), np.sin(yaw_a)], axis=1)
        offset = view[:, None] - xy_b[None]  # (A, B, 2) from b's camera to a's view point
        bearing = np.arctan2(offset[..., 1], offset[..., 0]) - yaw_b[None]
        mask &= np.abs(np.angle(np.exp(1j * bearing))) <= np.deg2rad(cfg.proxy_hfov_deg) / 2 + 1e-9
    return mask


# ------------------------------------------------------------------------------------------------
# One interface for both
# ------------------------------------------------------------------------------------------------

def world_frames(sequence: Sequence) -> tuple[Path, np.ndarray] | None:
    """``(run folder, file index of each position)`` of a synthetic run (:class:`~.synthetic.SyntheticRun`),
    also through frame subsets (``sources.SequenceSubset``: ``parent`` and ``frames``); None for other data."""
    if hasattr(sequence, "run_dir") and hasattr(sequence, "frame_indices"):
        return Path(sequence.run_dir), np.asarray(sequence.frame_indices, dtype=np.int64)
    parent, frames = getattr(sequence, "parent", None), getattr(sequence, "frames", None)
    if parent is None or frames is None:
        return None
    inner = world_frames(parent)
    return None if inner is None else (inner[0], inner[1][np.asarray(frames, dtype=np.int64)])


def world_root_of(sequences: TypingSequence[Sequence]) -> Path | None:
    """The generated world all sequences are runs (or frame subsets of runs) of, else None."""
    roots = set()
    for seq in sequences:
        found = world_frames(seq)
        if found is None:
            return None
        roots.add(found[0].resolve().parent.parent)
    if len(roots) != 1:
        return None
    root = roots.pop()
    return root if (root / WORLD_JSON).is_file() else None


def _file_indices(sequence: Sequence) -> np.ndarray:
    found = world_frames(sequence)
    return found[1] if found is not None else np.arange(len(sequence))


class VisibleStructure:
    """"Shares visible structure" over the frames of some sequences (module doc).

    Frames are ``(sequence index, position)`` pairs, as in ``training.data.FrameStore.frames``. With
    ``voxels`` (a world's :class:`FrameVoxels`) the world's ray-cast ground truth decides, else the pose
    proxy (``source`` says which). :meth:`from_sequences` finds and loads (or computes) the world's cache.
    """

    def __init__(self, sequences: TypingSequence[Sequence], cfg: VisibilityConfig = VisibilityConfig(),
                 voxels: FrameVoxels | None = None):
        self.sequences = list(sequences)
        self.cfg = cfg
        self.voxels = voxels
        self.source = WORLD if voxels is not None else PROXY
        self._poses = [np.asarray(seq.poses, dtype=float) for seq in self.sequences]
        if voxels is not None:
            self._rows = [voxels.rows(seq.run, _file_indices(seq)) for seq in self.sequences]

    @classmethod
    def from_sequences(cls, sequences: TypingSequence[Sequence], cfg: VisibilityConfig = VisibilityConfig(), *,
                       compute: bool = True, progress: bool = False) -> "VisibleStructure":
        """World ground truth when the sequences are runs of one generated world (its cache, computed on
        first use unless ``compute`` is False), else the pose proxy."""
        root = world_root_of(sequences)
        voxels = world_voxels(root, cfg, compute=compute, progress=progress) if root is not None else None
        return cls(sequences, cfg, voxels)

    def _split(self, frames) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames, dtype=np.int64).reshape(-1, 2)
        return frames[:, 0], frames[:, 1]

    def rows(self, frames) -> np.ndarray:
        """Cache rows of ``(sequence, position)`` frames (world ground truth only)."""
        if self.voxels is None:
            raise ValueError("no world visibility cache: this VisibleStructure uses the pose proxy")
        seq, pos = self._split(frames)
        return np.array([self._rows[s][i] for s, i in zip(seq, pos)], dtype=np.int64)

    def poses(self, frames) -> np.ndarray:
        seq, pos = self._split(frames)
        return np.stack([self._poses[s][i] for s, i in zip(seq, pos)]) if len(seq) else np.zeros((0, 4, 4))

    def sees(self, frames_a, frames_b) -> np.ndarray:
        """``(A, B)`` bool: frame ``b`` sees frame ``a``'s structure (at least ``min_shared`` of it)."""
        if self.voxels is None:
            return pose_proxy_mask(self.poses(frames_a), self.poses(frames_b), self.cfg)
        return self.voxels.seen_fraction(self.rows(frames_a), self.rows(frames_b)) >= self.cfg.min_shared

    def mask(self, frames_a, frames_b=None, *, symmetric: bool = True) -> np.ndarray:
        """Pairwise "shares visible structure" of a batch: ``(A, B)`` bool (``frames_b`` defaults to ``frames_a``).

        ``symmetric``: both frames see at least ``min_shared`` of each other's structure (the matrix of a
        batch with itself is then symmetric); else only ``b`` of ``a``'s (:meth:`sees`).
        """
        frames_b = frames_a if frames_b is None else frames_b
        out = self.sees(frames_a, frames_b)
        return out & self.sees(frames_b, frames_a).T if symmetric else out

    def matches(self, query: int, database: int) -> np.ndarray:
        """``(Q, D)`` bool over all frames of two sequences: the database frame sees the query's structure."""
        q = np.stack([np.full(len(self.sequences[query]), query), np.arange(len(self.sequences[query]))], axis=1)
        d = np.stack([np.full(len(self.sequences[database]), database),
                      np.arange(len(self.sequences[database]))], axis=1)
        return self.sees(q, d)

    def describe(self) -> dict:
        """Source and parameters, for result files."""
        out = {"source": self.source, **asdict(self.cfg)}
        if self.voxels is not None:
            out["cache_key"] = self.voxels.key
        return out


def shares_visible_structure(sequences: TypingSequence[Sequence], frames_a, frames_b=None, *,
                             cfg: VisibilityConfig = VisibilityConfig(), symmetric: bool = True) -> np.ndarray:
    """One-off :meth:`VisibleStructure.mask` (loads the world cache each call; keep a
    :class:`VisibleStructure` for repeated batches)."""
    return VisibleStructure.from_sequences(sequences, cfg).mask(frames_a, frames_b, symmetric=symmetric)
