"""Searching one embedding space: its description (:class:`EmbeddingSpace`, :class:`IndexConfig`) and the faiss
index that serves it (:class:`SpaceIndex`), kept in sync with the space's descriptors lazily.

Scores
    :meth:`SpaceIndex.search` returns faiss's raw distances (inner products, or *squared* L2); the place
    database turns them into similarities, higher is better.

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

    Indexes are brought up to date lazily (:meth:`SpaceIndex.sync`, at the next search, save or
    ``PlaceDatabase.index`` call): flat and HNSW indexes get the new vectors appended, IVF-PQ appends until
    a retrain is due, and that retrain runs inside the call that finds it due (seconds to minutes for large
    maps), so a map that is queried while it grows is better served by flat or HNSW.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from ..config import Section

MIN_TRAIN_PER_CENTROID = 39  # faiss k-means warns below 39 training points per centroid
MAX_DIM = 1 << 16  # descriptor dimensions accepted from a file or a config
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_SPACE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class IndexConfig(Section):
    """faiss index of one embedding space (see the module docstring for the trade-offs)."""

    type: Literal["flat", "hnsw", "ivfpq"] = Field("flat", description="flat (exact), hnsw or ivfpq")
    hnsw_m: int = Field(32, ge=2, le=512, description="HNSW: neighbours per node")
    ef_construction: int = Field(80, ge=1, le=1 << 16, description="HNSW: candidate list size while building")
    ef_search: int = Field(64, ge=1, le=1 << 16,
                           description="HNSW: candidate list size while searching (>= k used)")
    nlist: int | None = Field(
        None, ge=1, le=1 << 20, description="IVF-PQ: inverted lists; None = min(4*sqrt(N), N/39) at training time")
    pq_m: int | None = Field(None, ge=1, le=MAX_DIM,
                             description="IVF-PQ: sub-quantizers (must divide dim); None = dim/8")
    nbits: int = Field(8, ge=1, le=16, description="IVF-PQ: bits per sub-quantizer code")
    nprobe: int = Field(16, ge=1, le=1 << 20, description="IVF-PQ: lists visited per query")
    refine_factor: int = Field(
        4, ge=1, le=1024, description="IVF-PQ: re-rank k*refine_factor candidates with exact scores (1 = off)")
    retrain_growth: float = Field(2.0, gt=1.0, le=1e6,
                                  description="IVF-PQ: retrain when N grows by this factor")


@dataclass(frozen=True)
class EmbeddingSpace:
    """One descriptor space of a map: who produced the descriptors (model name and weights' sha256) and how
    they are searched (dimension, metric, index)."""

    name: str
    dim: int
    model_name: str
    model_sha256: str
    metric: Literal["ip", "l2"] = "ip"
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if not _SPACE_NAME.match(self.name):
            raise ValueError(f"space name {self.name!r}: use letters, digits, '_' or '-' (it names files)")
        if not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"space {self.name!r}: dim must be in 1..{MAX_DIM}, got {self.dim}")
        if self.metric not in METRICS:
            raise ValueError(f"space {self.name!r}: metric must be 'ip' or 'l2', got {self.metric!r}")
        if self.index.type == "ivfpq" and self.dim % self.pq_m != 0:
            raise ValueError(f"space {self.name!r}: pq_m={self.pq_m} must divide dim={self.dim}")

    @property
    def pq_m(self) -> int:
        return self.index.pq_m or max(1, self.dim // 8)


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
    cfg, d, metric = space.index, space.dim, METRICS[space.metric]
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


def index_class(built: str) -> type | None:
    """The faiss class a stored index of kind ``built`` must have (None: flat indexes are not stored)."""
    return {"hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}.get(built)


class SpaceIndex:
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

    def set_config(self, cfg: IndexConfig) -> None:
        """New search-time knobs (the caller keeps the index type): no rebuild."""
        self.space = replace(self.space, index=cfg)
        if self.index is not None:
            set_search_params(self.index, cfg)

    def search(self, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss results, re-ranked exactly for IVF-PQ: (distances as faiss defines them, rows)."""
        self.sync(vectors)
        refine = self.space.index.refine_factor if self.built == "ivfpq" else 1
        D, rows = self.index.search(queries, min(k * refine, len(vectors)))
        if refine > 1:
            D, rows = _exact_rerank(vectors, queries, rows, k, self.space.metric)
        return D, rows


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
