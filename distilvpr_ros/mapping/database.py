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

Index types (per space, :class:`IndexConfig`)
    * ``flat``: exact search (``IndexFlatIP`` / ``IndexFlatL2``).
    * ``hnsw``: ``IndexHNSWFlat`` (``hnsw_m``, ``ef_construction``, ``ef_search``); approximate
      neighbours, exact scores.
    * ``ivfpq``: ``IndexIVFPQ`` trained on the stored descriptors (``nlist``, ``pq_m``, ``nbits``,
      ``nprobe``). With fewer than ``39 * max(nlist, 2**nbits)`` vectors (faiss's own k-means minimum
      per centroid) it is not trained: the space falls back to exact flat search with a warning and
      trains once the map is large enough. The PQ shortlist (``k * refine_factor``) is re-ranked with the
      stored float32 descriptors, so returned scores are exact and thresholds calibrated with flat
      search still hold. It is retrained when the map grows by ``retrain_growth`` since training.

    Indexes are brought up to date lazily at the next search, save or :meth:`PlaceDatabase.index` call:
    flat and HNSW indexes get the new vectors appended, IVF-PQ appends until a retrain is due, and that
    retrain runs inside the call that finds it due (seconds to minutes for large maps), so a map that is
    queried while it grows is better served by flat or HNSW.

File format (a folder, written atomically; no pickle anywhere)
    ::

        map/
          schema.json              format, format_version, created_at, count, meta file + sha256, and per
                                   space: model {name, sha256}, dim, metric, index {config, built,
                                   trained_on, file, sha256}, count, descriptors {file, sha256}
          meta.json                keyframe columns, row i = keyframe id i:
                                   {"id": [...], "stamp": [s], "pose": [[x, y, z, qx, qy, qz, qw]],
                                    "frame_id": [...], "run": [...]}
          descriptors_<space>.npy  float32 N x dim (np.save; read with allow_pickle=False)
          index_<space>.faiss      faiss.write_index of HNSW / trained IVF-PQ indexes (flat is rebuilt)

    :meth:`PlaceDatabase.save` writes a temporary sibling folder (every file fsynced), moves an existing
    map to ``<name>.bak``, renames the new folder into place and then removes the backup. A crash at
    any point leaves either the old or the new map complete; if it happens between the two renames,
    :meth:`PlaceDatabase.load` finds ``<name>.bak`` and loads it with a warning.

    Loading checks the format version, every file's sha256, that counts agree across files, shapes,
    dtypes and finiteness; any problem raises :class:`MapError` naming the file. An index file that is
    missing or inconsistent is rebuilt from the descriptors with a warning.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Literal, Mapping

import faiss
import numpy as np
from pydantic import Field
from scipy.spatial.transform import Rotation

from ..config import Section
from ..data.errors import DataError
from ..data.geometry import make_pose
from ..utils.fileio import sha256_file

FORMAT_NAME = "distilvpr_ros.place_database"
FORMAT_VERSION = 1
SCHEMA_FILE = "schema.json"
META_FILE = "meta.json"
MIN_TRAIN_PER_CENTROID = 39  # faiss k-means warns below 39 training points per centroid
_SPACE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class MapError(DataError):
    """A map folder is missing, corrupt or inconsistent; the message names the file and the problem."""


class MapCompatibilityError(MapError):
    """A map's embedding space is missing or was built with another model than the one running."""


class IndexConfig(Section):
    """faiss index of one embedding space (see the module docstring for the trade-offs)."""

    type: Literal["flat", "hnsw", "ivfpq"] = Field("flat", description="flat (exact), hnsw or ivfpq")
    hnsw_m: int = Field(32, ge=2, description="HNSW: neighbours per node")
    ef_construction: int = Field(80, ge=1, description="HNSW: candidate list size while building")
    ef_search: int = Field(64, ge=1, description="HNSW: candidate list size while searching (>= k used)")
    nlist: int | None = Field(
        None, ge=1, description="IVF-PQ: inverted lists; None = min(4*sqrt(N), N/39) at training time")
    pq_m: int | None = Field(None, ge=1, description="IVF-PQ: sub-quantizers (must divide dim); None = dim/8")
    nbits: int = Field(8, ge=1, le=16, description="IVF-PQ: bits per sub-quantizer code")
    nprobe: int = Field(16, ge=1, description="IVF-PQ: lists visited per query")
    refine_factor: int = Field(
        4, ge=1, description="IVF-PQ: re-rank k*refine_factor candidates with exact scores (1 = off)")
    retrain_growth: float = Field(2.0, gt=1.0, description="IVF-PQ: retrain when N grows by this factor")


@dataclass(frozen=True)
class EmbeddingSpace:
    """One descriptor space of a map: who produced the descriptors and how they are searched."""

    name: str
    dim: int
    model_name: str
    model_sha256: str
    metric: Literal["ip", "l2"] = "ip"
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if not _SPACE_NAME.match(self.name):
            raise ValueError(f"space name {self.name!r}: use letters, digits, '_' or '-' (it names files)")
        if self.dim < 1:
            raise ValueError(f"space {self.name!r}: dim must be >= 1, got {self.dim}")
        if self.metric not in _METRICS:
            raise ValueError(f"space {self.name!r}: metric must be 'ip' or 'l2', got {self.metric!r}")
        if self.index.type == "ivfpq" and self.dim % self.pq_m != 0:
            raise ValueError(f"space {self.name!r}: pq_m={self.pq_m} must divide dim={self.dim}")

    @property
    def pq_m(self) -> int:
        return self.index.pq_m or max(1, self.dim // 8)

    def to_json(self) -> dict:
        return {"model": {"name": self.model_name, "sha256": self.model_sha256}, "dim": self.dim,
                "metric": self.metric, "index": {"config": self.index.model_dump()}}

    @classmethod
    def from_json(cls, name: str, d: dict) -> "EmbeddingSpace":
        return cls(name=name, dim=int(d["dim"]), model_name=d["model"]["name"],
                   model_sha256=d["model"]["sha256"], metric=d["metric"],
                   index=IndexConfig(**d["index"]["config"]))


@dataclass(frozen=True)
class KeyframeMeta:
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


class _SpaceIndex:
    """The faiss index of one space, kept in sync with the space's descriptor matrix lazily."""

    def __init__(self, space: EmbeddingSpace) -> None:
        self.space = space
        self.index: faiss.Index | None = None
        self.built = "none"  # "flat", "hnsw" or "ivfpq": what is actually built (flat = IVF-PQ fallback)
        self.trained_on = 0

    def _wanted(self, n: int) -> str:
        if self.space.index.type != "ivfpq":
            return self.space.index.type
        return "ivfpq" if n >= ivf_min_train(self.space.index, n) else "flat"

    def sync(self, vectors: np.ndarray) -> None:
        n = len(vectors)
        wanted = self._wanted(n)
        retrain = (self.built == "ivfpq" and n > self.space.index.retrain_growth * self.trained_on)
        if self.index is None or self.built != wanted or retrain or self.index.ntotal > n:
            self.rebuild(vectors)
        elif self.index.ntotal < n:
            self.index.add(np.ascontiguousarray(vectors[self.index.ntotal:]))

    def rebuild(self, vectors: np.ndarray) -> None:
        """Build (and train) the index from scratch over ``vectors``."""
        self.built = self._wanted(len(vectors))
        if self.space.index.type == "ivfpq" and self.built == "flat":
            need = ivf_min_train(self.space.index, len(vectors))
            warnings.warn(f"space {self.space.name!r}: {len(vectors)} vectors are too few to train IVF-PQ "
                          f"(needs >= {need}); using exact flat search until then", stacklevel=4)
        self.index = build_index(self.space, vectors, self.built)
        self.trained_on = len(vectors) if self.built == "ivfpq" else 0

    def adopt(self, index: faiss.Index, built: str, trained_on: int) -> None:
        """Use an index read from disk (already checked against the descriptors)."""
        self.index, self.built, self.trained_on = index, built, trained_on
        set_search_params(index, self.space.index)

    def search(self, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss results, re-ranked exactly for IVF-PQ: (distances as faiss defines them, rows)."""
        self.sync(vectors)
        refine = self.space.index.refine_factor if self.built == "ivfpq" else 1
        D, rows = self.index.search(queries, min(k * refine, len(vectors)))
        if refine > 1:
            D, rows = _exact_rerank(vectors, queries, rows, k, self.space.metric)
        return D, rows


def ivf_nlist(cfg: IndexConfig, n: int) -> int:
    """IVF lists for a map of n vectors: ``cfg.nlist``, or min(4*sqrt(n), n/39) when unset."""
    return cfg.nlist or max(1, min(int(4 * math.sqrt(n)), n // MIN_TRAIN_PER_CENTROID))


def ivf_min_train(cfg: IndexConfig, n: int) -> int:
    """Vectors needed to train IVF-PQ: 39 per centroid of the coarse and of each PQ quantizer."""
    return MIN_TRAIN_PER_CENTROID * max(ivf_nlist(cfg, n), 2 ** cfg.nbits)


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    """Apply the search-time knobs of ``cfg`` (HNSW efSearch, IVF nprobe) to a faiss index."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.nprobe


def build_index(space: EmbeddingSpace, vectors: np.ndarray, kind: str | None = None) -> faiss.Index:
    """A faiss index of ``kind`` (default: the space's index type) holding ``vectors`` (float32 N x dim).

    IVF-PQ is trained on ``vectors``; the caller makes sure there are enough (:func:`ivf_min_train`).
    """
    cfg, d, metric = space.index, space.dim, _METRICS[space.metric]
    kind = kind or cfg.type
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if space.metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, metric)
        index.hnsw.efConstruction = cfg.ef_construction
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(d) if space.metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQ(quantizer, d, ivf_nlist(cfg, len(vectors)), space.pq_m, cfg.nbits, metric)
        index.train(np.ascontiguousarray(vectors))
    else:
        raise ValueError(f"unknown index type {kind!r}")
    set_search_params(index, cfg)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors))
    return index


def _exact_rerank(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int,
                  metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-score a shortlist exactly against the stored vectors and keep the best k (faiss conventions)."""
    valid = rows >= 0
    cand = vectors[np.where(valid, rows, 0)]  # Q x K' x D
    if metric == "ip":
        D = np.einsum("qkd,qd->qk", cand, queries)
        D[~valid] = -np.inf
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    else:
        D = ((cand - queries[:, None, :]) ** 2).sum(-1)
        D[~valid] = np.inf
        order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(rows, order, 1)


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
        self._index = {s.name: _SpaceIndex(s) for s in spaces}
        self._stamps = _Growing((), np.float64)
        self._poses = _Growing((7,), np.float64)
        self._frame_ids: list[str] = []
        self._runs: list[str] = []

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
        cfg = IndexConfig(**{**sp.index.model_dump(), **changes})
        sp = replace(sp, index=cfg)
        self._spaces[space] = sp
        self._index[space].space = sp
        if self._index[space].index is not None:
            set_search_params(self._index[space].index, cfg)

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

    def add(self, stamp: float, pose, frame_id: str, run: str, descriptors: Mapping[str, np.ndarray]) -> int:
        """Add one keyframe; ``pose`` is a 4x4 ``world_T_base`` or a 7-vector. Returns its id."""
        rows = {k: np.asarray(v, dtype=np.float32).reshape(1, -1) for k, v in descriptors.items()}
        return int(self.add_many([stamp], np.asarray(pose)[None], [frame_id], [run], rows)[0])

    def add_many(self, stamps, poses, frame_ids: Iterable[str], runs: Iterable[str],
                 descriptors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Add N keyframes at once (all inputs length N, one (N, dim) matrix per space). Returns their ids.

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
        first = len(self)
        for name, x in checked.items():
            self._desc[name].extend(x)
        self._stamps.extend(stamps)
        self._poses.extend(poses)
        self._frame_ids.extend(frame_ids)
        self._runs.extend(runs)
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

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the map folder atomically (module docstring); returns its path."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        bak = path.with_name(f"{path.name}.bak")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        moved_old = False
        try:
            self._write(tmp)
            if path.exists():
                shutil.rmtree(bak, ignore_errors=True)
                os.replace(path, bak)
                moved_old = True
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if moved_old and not path.exists():
                os.replace(bak, path)
            raise
        shutil.rmtree(bak, ignore_errors=True)
        return path

    def _write(self, folder: Path) -> None:
        spaces = {}
        for name, sp in self._spaces.items():
            desc_file = f"descriptors_{name}.npy"
            with open(folder / desc_file, "wb") as f:
                np.save(f, self.descriptors(name), allow_pickle=False)
                _flush(f)
            entry = sp.to_json()
            entry["count"] = len(self)
            entry["descriptors"] = {"file": desc_file, "sha256": sha256_file(folder / desc_file)}
            idx = self._index[name]
            idx.sync(self.descriptors(name))
            entry["index"].update(built=idx.built, trained_on=idx.trained_on, file=None, sha256=None)
            if idx.built != "flat":
                index_file = f"index_{name}.faiss"
                faiss.write_index(idx.index, str(folder / index_file))
                _fsync_file(folder / index_file)
                entry["index"].update(file=index_file, sha256=sha256_file(folder / index_file))
            spaces[name] = entry
        meta = {"id": self.ids.tolist(), "stamp": self.stamps.tolist(), "pose": self.poses.tolist(),
                "frame_id": self._frame_ids, "run": self._runs}
        _write_json(folder / META_FILE, meta)
        schema = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "count": len(self),
                  "meta": {"file": META_FILE, "sha256": sha256_file(folder / META_FILE)}, "spaces": spaces}
        _write_json(folder / SCHEMA_FILE, schema, indent=2)
        _fsync_dir(folder)

    @classmethod
    def load(cls, path: str | Path, expect: Mapping[str, str] | None = None) -> "PlaceDatabase":
        """Read a map folder, verifying integrity; ``expect``: ``{space: model_sha256}`` the caller runs.

        Raises :class:`MapCompatibilityError` when an expected space is missing or was built with a
        different model, and :class:`MapError` naming the file for anything missing or corrupt.
        """
        path = Path(path)
        bak = path.with_name(f"{path.name}.bak")
        if not path.exists() and (bak / SCHEMA_FILE).is_file():
            warnings.warn(f"{path} is missing (interrupted save); loading the previous map {bak}", stacklevel=2)
            path = bak
        schema = _read_schema(path)
        try:
            count = int(schema["count"])
            spaces = [EmbeddingSpace.from_json(name, d) for name, d in schema["spaces"].items()]
            meta_file, meta_sha = _member(path, schema["meta"]["file"]), schema["meta"]["sha256"]
            entries = {sp.name: schema["spaces"][sp.name] for sp in spaces}
            desc_files = {name: (_member(path, e["descriptors"]["file"]), e["descriptors"]["sha256"])
                          for name, e in entries.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise MapError(path / SCHEMA_FILE, f"malformed schema ({type(e).__name__}: {e})") from None
        _check_expectations(path, {sp.name: sp for sp in spaces}, expect or {})

        db = cls(spaces)
        meta = _read_meta(meta_file, meta_sha, count)
        for sp in spaces:
            if entries[sp.name].get("count") != count:
                raise MapError(path / SCHEMA_FILE, f"space {sp.name!r} count {entries[sp.name].get('count')} != "
                                                   f"map count {count}")
            db._desc[sp.name].extend(_read_descriptors(*desc_files[sp.name], sp, count))
        db._stamps.extend(meta["stamp"])
        db._poses.extend(meta["pose"])
        db._frame_ids, db._runs = meta["frame_id"], meta["run"]
        for sp in spaces:
            _load_index(path, entries[sp.name]["index"], db._index[sp.name], db.descriptors(sp.name))
        return db


# ---------------------------------------------------------------------- file helpers
def _flush(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj, indent: int | None = None) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        _flush(f)


def _member(folder: Path, name) -> Path:
    """``folder / name`` for a plain file name recorded in the schema (never a path leading elsewhere)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise MapError(folder / SCHEMA_FILE, f"invalid file name {name!r}")
    return folder / name


def _verify(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise MapError(path, "file is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise MapError(path, f"checksum mismatch (corrupt, truncated or modified): sha256 {actual[:12]}… "
                             f"but schema.json records {str(sha256)[:12]}…")


def _read_schema(path: Path) -> dict:
    file = path / SCHEMA_FILE
    if not path.is_dir():
        raise MapError(path, "map folder not found")
    if not file.is_file():
        raise MapError(file, "not a place database (no schema.json)")
    try:
        schema = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MapError(file, f"corrupt JSON ({e})") from None
    if not isinstance(schema, dict) or schema.get("format") != FORMAT_NAME:
        raise MapError(file, f"not a {FORMAT_NAME} schema")
    if schema.get("format_version") != FORMAT_VERSION:
        raise MapError(file, f"format version {schema.get('format_version')} not supported (this package reads "
                             f"{FORMAT_VERSION})")
    return schema


def _check_expectations(path: Path, spaces: dict[str, EmbeddingSpace], expect: Mapping[str, str]) -> None:
    for name, sha in expect.items():
        if name not in spaces:
            raise MapCompatibilityError(path, f"map has no embedding space {name!r} (has {sorted(spaces)}); "
                                              "it was built without this model")
        sp = spaces[name]
        if sp.model_sha256 != sha:
            raise MapCompatibilityError(
                path, f"space {name!r}: map built with model {sp.model_name} (sha256 {sp.model_sha256}), "
                      f"node runs model sha256 {sha}; rebuild the map with this model or load the matching one")


def _read_meta(file: Path, sha256: str, count: int) -> dict:
    _verify(file, sha256)
    try:
        meta = json.loads(file.read_text())
        cols = {k: meta[k] for k in ("id", "stamp", "pose", "frame_id", "run")}
        lengths = {k: len(v) for k, v in cols.items()}
        ids = np.asarray(cols["id"], dtype=np.int64)
        stamps = np.asarray(cols["stamp"], dtype=np.float64).reshape(-1)
        poses = np.asarray(cols["pose"], dtype=np.float64).reshape(-1, 7)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise MapError(file, f"malformed keyframe metadata ({type(e).__name__}: {e})") from None
    if any(n != count for n in lengths.values()):
        raise MapError(file, f"column lengths {lengths} disagree with the map count {count}")
    if not np.array_equal(ids, np.arange(count)):
        raise MapError(file, "keyframe ids are not 0..N-1 in order")
    if not (np.isfinite(stamps).all() and np.isfinite(poses).all()):
        raise MapError(file, "stamps or poses contain NaN or inf")
    return {"stamp": stamps, "pose": poses, "frame_id": [str(f) for f in cols["frame_id"]],
            "run": [str(r) for r in cols["run"]]}


def _read_descriptors(file: Path, sha256: str, space: EmbeddingSpace, count: int) -> np.ndarray:
    _verify(file, sha256)
    try:
        desc = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MapError(file, f"unreadable descriptor file ({e})") from None
    if desc.dtype != np.float32 or desc.shape != (count, space.dim):
        raise MapError(file, f"expected float32 {count} x {space.dim}, got {desc.dtype} {desc.shape}")
    if not np.isfinite(desc).all():
        raise MapError(file, "descriptors contain NaN or inf")
    return desc


def _load_index(path: Path, entry: dict, idx: _SpaceIndex, vectors: np.ndarray) -> None:
    """Adopt the stored index when it matches the descriptors; otherwise rebuild it (with a warning)."""
    if entry.get("file") is None:
        idx.sync(vectors)  # flat (or an IVF-PQ fallback): rebuilt, cheap
        return
    file = path / str(entry["file"])
    problem = None
    try:
        _verify(_member(path, entry["file"]), entry["sha256"])
        index = faiss.read_index(str(file))
        expected = {"hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}.get(entry.get("built"))
        if expected is None or not isinstance(index, expected) or index.ntotal != len(vectors) \
                or index.d != idx.space.dim or index.metric_type != _METRICS[idx.space.metric]:
            problem = (f"{type(index).__name__} with {index.ntotal} x {index.d} vectors, metric "
                       f"{index.metric_type}; schema says {entry.get('built')}")
    except (MapError, RuntimeError) as e:
        problem = str(e)
    if problem is None:
        idx.adopt(index, entry["built"], int(entry.get("trained_on", 0)))
    else:
        warnings.warn(f"{file}: index unusable ({problem}); rebuilding from the descriptors", stacklevel=3)
        idx.rebuild(vectors)
