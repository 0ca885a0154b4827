"""Place database: keyframe metadata plus one descriptor matrix and faiss index per embedding space.

Embedding spaces
    A map is built by running several models on the same keyframes (the camera+LiDAR teacher and the
    camera-only student, see DESIGN.md "Embedding spaces"). Each model's descriptors live in their own
    *space* (``"teacher"``, ``"camera_student"``, ...), tagged with the model's identity (a name and the
    sha256 of its weights, e.g. ``checkpoint.json["sha256"]["model.safetensors"]``). Every keyframe has a
    descriptor in every space; a query searches only its own space, and :meth:`PlaceDatabase.load` with
    ``expect={space: model_sha256}`` refuses a map built with another model.

Scores
    :meth:`PlaceDatabase.search` returns similarities, higher is better, for both metrics:

    * ``"ip"`` (default): descriptors and queries are L2-normalised on the way in, so the score is the
      cosine similarity in [-1, 1].
    * ``"l2"``: the score is the *negative Euclidean* distance ``-||q - x||``. faiss L2 indexes return
      *squared* distances; they are square-rooted before negation, so a threshold on the score is a
      threshold in descriptor units.

    Missing results (``k`` larger than the map) have id ``-1`` and score ``-inf``.

Where the rest lives
    * :mod:`.index`: :class:`EmbeddingSpace`, :class:`IndexConfig` and the faiss indexes (flat, HNSW,
      IVF-PQ with exact re-ranking), built and brought up to date lazily.
    * :mod:`.map_io`: the folder format (schema.json, meta.json, descriptors, index files, keyframe views,
      checksums), written crash-safely and read with every number checked before allocating.
    * :mod:`.views`: per keyframe the JPEG image and LiDAR points geometric verification needs, and the
      calibration of each run (:meth:`PlaceDatabase.view`, :meth:`PlaceDatabase.calibration`).
    * :mod:`.errors`: :class:`MapError`, :class:`MapCompatibilityError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import faiss
import numpy as np
from scipy.spatial.transform import Rotation

from ..data.geometry import make_pose
from .errors import MapCompatibilityError, MapError
from .index import EmbeddingSpace, IndexConfig, SpaceIndex
from .map_io import FORMAT_VERSION, MapContents, StoredIndex, read_map, write_map
from .views import ViewData, ViewStore


@dataclass(frozen=True)
class KeyframeMeta:
    """One keyframe's metadata (:meth:`PlaceDatabase.meta`)."""

    id: int
    stamp: float
    pose: np.ndarray  # (7,) x, y, z, qx, qy, qz, qw
    frame_id: str
    run: str

    @property
    def pose_matrix(self) -> np.ndarray:
        """4x4 ``world_T_base`` (package convention)."""
        return make_pose(self.pose[:3], self.pose[3:])


class _Growing:
    """A numpy array that grows along axis 0 with amortised O(1) appends."""

    def __init__(self, row_shape: tuple[int, ...], dtype) -> None:
        self._buf = np.empty((16, *row_shape), dtype=dtype)
        self._n = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self._n + len(rows)
        if need > len(self._buf):
            buf = np.empty((max(need, 2 * len(self._buf)), *self._buf.shape[1:]), dtype=self._buf.dtype)
            buf[:self._n] = self._buf[:self._n]
            self._buf = buf
        self._buf[self._n:need] = rows
        self._n = need

    @property
    def view(self) -> np.ndarray:
        v = self._buf[:self._n]
        v.flags.writeable = False
        return v


def _poses_to_7(poses: np.ndarray) -> np.ndarray:
    """(N, 7) x y z qx qy qz qw from (N, 7) or (N, 4, 4) poses; quaternions normalised."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[1:] == (4, 4):
        out = np.concatenate([poses[:, :3, 3], Rotation.from_matrix(poses[:, :3, :3]).as_quat()], axis=1)
    elif poses.ndim == 2 and poses.shape[1] == 7:
        out = poses.copy()
    else:
        raise ValueError(f"poses must be 4x4 matrices or 7-vectors (x y z qx qy qz qw), got shape {poses.shape}")
    if not np.isfinite(out).all():
        raise ValueError("poses contain NaN or inf")
    qn = np.linalg.norm(out[:, 3:], axis=1, keepdims=True)
    if (qn < 1e-9).any():
        raise ValueError("pose quaternion has zero norm")
    out[:, 3:] /= qn
    return out


class PlaceDatabase:
    """Keyframes (id, stamp, pose, frame_id, run) with descriptors in one or more embedding spaces.

    Keyframe ids are row numbers: 0, 1, 2, ... in insertion order (keyframes are never removed).
    """

    def __init__(self, spaces: Iterable[EmbeddingSpace]) -> None:
        spaces = list(spaces)
        if not spaces:
            raise ValueError("a place database needs at least one embedding space")
        names = [s.name for s in spaces]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate space names: {names}")
        self._spaces = {s.name: s for s in spaces}
        self._desc = {s.name: _Growing((s.dim,), np.float32) for s in spaces}
        self._index = {s.name: SpaceIndex(s) for s in spaces}
        self._stamps = _Growing((), np.float64)
        self._poses = _Growing((7,), np.float64)
        self._frame_ids: list[str] = []
        self._runs: list[str] = []
        self._views = ViewStore()
        self.format_version = FORMAT_VERSION  # of the file it was loaded from (1: no views)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._frame_ids)

    def __repr__(self) -> str:
        spaces = ", ".join(f"{s.name}[{s.dim}, {s.metric}, {s.index.type}]" for s in self._spaces.values())
        return f"PlaceDatabase({len(self)} keyframes; {spaces})"

    @property
    def spaces(self) -> Mapping[str, EmbeddingSpace]:
        return MappingProxyType(self._spaces)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    @property
    def stamps(self) -> np.ndarray:
        """(N,) float64 seconds (read-only view)."""
        return self._stamps.view

    @property
    def poses(self) -> np.ndarray:
        """(N, 7) float64 x y z qx qy qz qw (read-only view)."""
        return self._poses.view

    @property
    def positions(self) -> np.ndarray:
        """(N, 2) planar positions x, y in metres (read-only view)."""
        return self._poses.view[:, :2]

    @property
    def frame_ids(self) -> list[str]:
        return list(self._frame_ids)

    @property
    def runs(self) -> list[str]:
        return list(self._runs)

    def descriptors(self, space: str) -> np.ndarray:
        """(N, dim) float32 descriptors of a space (read-only view)."""
        return self._desc[self._space(space).name].view

    def index(self, space: str) -> faiss.Index:
        """The faiss index serving a space, built or brought up to date now.

        Call it after loading or a bulk :meth:`add_many` so that the first query does not pay for the
        build. Positions in the index are keyframe ids; treat the index as read-only.
        """
        idx = self._index[self._space(space).name]
        idx.sync(self.descriptors(space))
        return idx.index

    def set_search_params(self, space: str, *, ef_search: int | None = None, nprobe: int | None = None,
                          refine_factor: int | None = None) -> None:
        """Change a space's search-time knobs (no rebuild): HNSW ``ef_search``, IVF-PQ ``nprobe`` and
        ``refine_factor``; ``None`` keeps the current value. Saved with the map."""
        sp = self._space(space)
        changes = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe),
                                     ("refine_factor", refine_factor)) if v is not None}
        self._index[space].set_config(IndexConfig(**{**sp.index.model_dump(), **changes}))
        self._spaces[space] = self._index[space].space

    def index_state(self, space: str) -> dict:
        """``{"built", "ntotal", "trained_on"}`` of a space's index (diagnostics; updated at the next search)."""
        idx = self._index[self._space(space).name]
        return {"built": idx.built, "ntotal": 0 if idx.index is None else int(idx.index.ntotal),
                "trained_on": idx.trained_on}

    def meta(self, id: int) -> KeyframeMeta:
        if not 0 <= id < len(self):
            raise IndexError(f"keyframe id {id} not in the map (0..{len(self) - 1})")
        return KeyframeMeta(int(id), float(self.stamps[id]), self.poses[id].copy(), self._frame_ids[id],
                            self._runs[id])

    def view(self, id: int) -> ViewData:
        """Keyframe ``id``'s stored view (JPEG bytes, float16 LiDAR-frame points); empty when it has none."""
        if not 0 <= id < len(self):
            raise IndexError(f"keyframe id {id} not in the map (0..{len(self) - 1})")
        return self._views.get(int(id))

    @property
    def has_views(self) -> bool:
        """Whether any keyframe has a stored view (a map of format 1 has none)."""
        return self._views.any

    def calibration(self, run: str) -> dict | None:
        """The camera calibration (``CameraCalibration.to_dict``) recorded for ``run``, or None."""
        return self._views.calibrations.get(run)

    @property
    def calibrations(self) -> Mapping[str, dict]:
        return MappingProxyType(self._views.calibrations)

    def set_calibration(self, run: str, calibration: Mapping) -> None:
        """Record the calibration of ``run`` (once per run; a different one for the same run: ValueError)."""
        self._views.set_calibration(str(run), dict(calibration))

    def _space(self, name: str) -> EmbeddingSpace:
        if name not in self._spaces:
            raise KeyError(f"no embedding space {name!r} in the map (has {sorted(self._spaces)})")
        return self._spaces[name]

    # ------------------------------------------------------------------ adding
    def _check_vectors(self, space: EmbeddingSpace, x, n: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != space.dim:
            raise ValueError(f"space {space.name!r}: expected descriptors of dim {space.dim}, got shape "
                             f"{np.shape(x)}")
        if n >= 0 and len(x) != n:
            raise ValueError(f"space {space.name!r}: {len(x)} descriptors for {n} keyframes")
        if not np.isfinite(x).all():
            raise ValueError(f"space {space.name!r}: descriptors contain NaN or inf")
        if space.metric == "ip":
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            if (norm < 1e-12).any():
                raise ValueError(f"space {space.name!r}: zero descriptor cannot be L2-normalised")
            x = x / norm
        return np.ascontiguousarray(x, dtype=np.float32)

    def add(self, stamp: float, pose, frame_id: str, run: str, descriptors: Mapping[str, np.ndarray],
            view: ViewData | None = None) -> int:
        """Add one keyframe; ``pose`` is a 4x4 ``world_T_base`` or a 7-vector; ``view``: what verification needs
        of it (None = no view). Returns its id."""
        rows = {k: np.asarray(v, dtype=np.float32).reshape(1, -1) for k, v in descriptors.items()}
        return int(self.add_many([stamp], np.asarray(pose)[None], [frame_id], [run], rows, [view])[0])

    def add_many(self, stamps, poses, frame_ids: Iterable[str], runs: Iterable[str],
                 descriptors: Mapping[str, np.ndarray], views: Iterable[ViewData | None] | None = None) -> np.ndarray:
        """Add N keyframes at once (all inputs length N, one (N, dim) matrix per space, optionally N views).
        Returns their ids.

        Every space of the map must be given; ``ip`` descriptors are L2-normalised. Nothing is added if
        any input is invalid (ValueError).
        """
        stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
        n = len(stamps)
        if not np.isfinite(stamps).all():
            raise ValueError("stamps contain NaN or inf")
        poses = _poses_to_7(poses)
        frame_ids, runs = [str(f) for f in frame_ids], [str(r) for r in runs]
        if not len(poses) == len(frame_ids) == len(runs) == n:
            raise ValueError(f"got {n} stamps, {len(poses)} poses, {len(frame_ids)} frame_ids, {len(runs)} runs")
        missing, unknown = set(self._spaces) - set(descriptors), set(descriptors) - set(self._spaces)
        if missing or unknown:
            raise ValueError(f"descriptors must cover exactly the map's spaces {sorted(self._spaces)}: "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        checked = {name: self._check_vectors(self._spaces[name], x, n) for name, x in descriptors.items()}
        views = [None] * n if views is None else list(views)
        if len(views) != n:
            raise ValueError(f"{len(views)} views for {n} keyframes")
        packed = ViewStore()
        for v in views:
            packed.append(v)  # validates (and converts) before anything is added
        first = len(self)
        for name, x in checked.items():
            self._desc[name].extend(x)
        self._stamps.extend(stamps)
        self._poses.extend(poses)
        self._frame_ids.extend(frame_ids)
        self._runs.extend(runs)
        for i in range(n):
            self._views.append(packed.get(i))
        return np.arange(first, len(self), dtype=np.int64)

    # ------------------------------------------------------------------ search
    def search(self, space: str, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar keyframes per query: ``(scores Q x k float32, ids Q x k int64)``, best first.

        Scores are similarities (module docstring); missing results have id -1 and score -inf. Ask for a
        larger k to over-fetch when some results will be filtered out (the matcher's temporal exclusion).
        """
        sp = self._space(space)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._check_vectors(sp, queries, -1)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if len(self) == 0:
            return scores, ids
        D, rows = self._index[space].search(self.descriptors(space), q, k)
        found = rows >= 0
        if sp.metric == "l2":
            D = -np.sqrt(np.maximum(D, 0.0))
        scores[:, :D.shape[1]] = np.where(found, D, -np.inf)
        ids[:, :rows.shape[1]] = np.where(found, rows, -1)
        return scores, ids

    def scores(self, space: str, query, ids) -> np.ndarray:
        """Similarity of one query to the keyframes ``ids``, as :meth:`search` scores it (float32)."""
        sp = self._space(space)
        q = self._check_vectors(sp, query, 1)[0]
        d = self.descriptors(space)[np.asarray(ids, dtype=np.int64)]
        if sp.metric == "l2":
            return (-np.linalg.norm(d - q, axis=1)).astype(np.float32)
        return (d @ q).astype(np.float32)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the map folder crash-safely (:mod:`.map_io`); returns its path."""
        indexes = {}
        for name, idx in self._index.items():
            idx.sync(self.descriptors(name))
            indexes[name] = StoredIndex(idx.index, idx.built, idx.trained_on)
        return write_map(path, MapContents(list(self._spaces.values()), self.stamps, self.poses, self._frame_ids,
                                           self._runs, {name: self.descriptors(name) for name in self._spaces},
                                           indexes, self._views))

    @classmethod
    def load(cls, path: str | Path, expect: Mapping[str, str] | None = None) -> "PlaceDatabase":
        """Read a map folder, verifying integrity; ``expect``: ``{space: model_sha256}`` the caller runs.

        Raises :class:`MapCompatibilityError` when an expected space is missing or was built with a
        different model, and :class:`MapError` naming the file for anything missing or corrupt.
        """
        m = read_map(path, expect)
        db = cls(m.spaces)
        for sp in m.spaces:
            db._desc[sp.name].extend(m.descriptors[sp.name])
        db._stamps.extend(m.stamps)
        db._poses.extend(m.poses)
        db._frame_ids, db._runs = list(m.frame_ids), list(m.runs)
        db._views = m.views if m.views is not None else ViewStore.empty(len(m.stamps))
        db.format_version = m.format_version
        for sp in m.spaces:
            stored, idx = m.indexes[sp.name], db._index[sp.name]
            if stored.index is None:
                idx.sync(db.descriptors(sp.name))
            else:
                idx.adopt(stored.index, stored.built, stored.trained_on)
        return db


__all__ = ["EmbeddingSpace", "IndexConfig", "KeyframeMeta", "MapCompatibilityError", "MapError",
           "PlaceDatabase", "ViewData"]
