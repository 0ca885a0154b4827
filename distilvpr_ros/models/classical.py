"""Classical LiDAR place descriptors that need no training: Scan Context, its ring key, its FFT variant.

Scan Context (Kim & Kim, IROS 2018; the loop detector of SC-LIO-SAM) is a polar grid of the scan, 20 rings
x 60 sectors out to the LiDAR's range, holding the maximum point height per cell
(:func:`scan_context`, the max-height channel of :func:`~.preprocess.cloud_to_polar` on
:func:`~.config.scan_context_grid`). A yaw of the sensor by ``k`` whole sectors rolls its columns by ``k``.

* :func:`ring_key`: the mean of each ring over the sectors (``rings``-d), invariant to any yaw.
* :func:`column_shift_distance`: ``min over shifts s`` of ``1 - mean cosine`` between the columns of one
  grid and the columns of the other rolled by ``s`` (only columns non-empty in both count), with the shift
  that attains it. :func:`scan_context_distances` is the original two-stage search: the ``candidates``
  database grids with the nearest ring keys (L2), re-ranked by the column-shift distance.
* :func:`fft_descriptor`: the magnitude of the discrete Fourier transform of each ring over the sectors,
  flattened (``rings x (sectors // 2 + 1)``), compared by cosine. Rolling the columns only changes the
  phase, so a yaw by whole sectors leaves it exactly unchanged and any yaw nearly so.

``ClassicalModel`` wraps the two cosine descriptors as parameter-free model kinds (``ring_key``,
``scan_context_fft``) with the ``VprModel`` interface, so ``evaluate``, ``build-map`` and the nodes use them
like a trained LiDAR model (their ``cloud`` input is the Scan Context grid, from ``cloud_to_bev``). Only
the maths above is numpy; the wrapper converts tensors (and needs torch).
"""

from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig, PolarConfig, scan_context_grid
from .preprocess import cloud_to_polar
from .vpr import InputSpec, VprModel

#: Columns (or ring keys) with a norm below this count as empty.
EMPTY_NORM = 1e-12
#: Ring-key candidates re-ranked by the column-shift distance (Scan Context's default).
SC_CANDIDATES = 10


def scan_context(cloud: np.ndarray | None, cfg: PolarConfig | None = None) -> np.ndarray:
    """``rings x sectors`` float32 Scan Context of one cloud (normalised max height, 0 when empty)."""
    cfg = cfg or scan_context_grid()
    return cloud_to_polar(cloud, cfg)[0]


def ring_key(grid: np.ndarray) -> np.ndarray:
    """Mean over the sectors of each ring: ``(..., rings, sectors) -> (..., rings)``."""
    return np.asarray(grid, dtype=np.float32).mean(axis=-1)


def fft_descriptor(grid: np.ndarray) -> np.ndarray:
    """``|rfft|`` of each ring over the sectors, flattened: ``(..., R, S) -> (..., R * (S // 2 + 1))``."""
    grid = np.asarray(grid, dtype=np.float64)
    magnitude = np.abs(np.fft.rfft(grid, axis=-1))
    return magnitude.reshape(*grid.shape[:-2], -1).astype(np.float32)


def _unit_columns(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to unit norm (over the rings) and the mask of non-empty columns."""
    norms = np.linalg.norm(grid, axis=-2, keepdims=True)
    nonempty = norms[..., 0, :] > EMPTY_NORM
    return grid / np.maximum(norms, EMPTY_NORM), nonempty


def column_shift_distances(query: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scan Context distance of one query grid to each of ``K`` candidate grids, and the best shifts.

    Args:
        query: ``R x S`` grid.
        candidates: ``K x R x S`` grids.

    Returns:
        ``(distance, shift)`` of shape ``(K,)``: ``distance = min_s 1 - mean_j cos(q[:, j], c[:, j - s])``
        over the columns ``j`` non-empty in both (1 when there is none), and the ``s`` attaining it, so
        ``query ≈ np.roll(candidate, s, axis=1)``.
    """
    query = np.asarray(query, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, *query.shape)
    sectors = query.shape[1]
    q_unit, q_nonempty = _unit_columns(query)
    c_unit, c_nonempty = _unit_columns(candidates)
    # shifted[k, s] = np.roll(candidate k, s, axis=1): column j of it is column (j - s) mod S.
    index = (np.arange(sectors)[None, :] - np.arange(sectors)[:, None]) % sectors  # s x j
    shifted = c_unit[:, :, index]  # K x R x s x j
    shifted_nonempty = c_nonempty[:, index]  # K x s x j
    cosine = np.einsum("rj,krsj->ksj", q_unit, shifted)
    both = shifted_nonempty & q_nonempty[None, None, :]
    count = both.sum(axis=-1)
    similarity = np.where(count > 0, (cosine * both).sum(axis=-1) / np.maximum(count, 1), 0.0)
    distance = 1.0 - similarity  # K x s
    best = distance.argmin(axis=1)
    return distance[np.arange(len(best)), best], best


def column_shift_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Scan Context distance between two ``R x S`` grids and the shift ``s`` with ``a ≈ roll(b, s)``."""
    distance, shift = column_shift_distances(a, np.asarray(b)[None])
    return float(distance[0]), int(shift[0])


def scan_context_distances(queries: np.ndarray, database: np.ndarray,
                           candidates: int = SC_CANDIDATES) -> np.ndarray:
    """``Q x D`` Scan Context distances: ring-key top-``candidates`` re-ranked by column shift, ``inf`` elsewhere.

    Args:
        queries: ``Q x R x S`` grids; database: ``D x R x S`` grids.
        candidates: database grids kept per query, those with the nearest ring keys (L2).
    """
    queries = np.asarray(queries, dtype=np.float32)
    database = np.asarray(database, dtype=np.float32)
    out = np.full((len(queries), len(database)), np.inf)
    if not len(database):
        return out
    q_keys, d_keys = ring_key(queries), ring_key(database)
    key_distance = ((q_keys[:, None, :] - d_keys[None, :, :]) ** 2).sum(axis=-1)
    k = min(candidates, len(database))
    nearest = np.argpartition(key_distance, k - 1, axis=1)[:, :k]
    for i, chosen in enumerate(nearest):
        out[i, chosen] = column_shift_distances(queries[i], database[chosen])[0]
    return out


class ClassicalModel(VprModel):
    """A parameter-free LiDAR model kind: ``cloud`` is the Scan Context grid (``B x 1 x R x S``, from
    ``cloud_to_bev`` with ``cfg.scan_context``); ``forward`` returns ``{"fused": descriptor}``.

    ``ring_key``: ``R``-d; ``scan_context_fft``: ``R * (S // 2 + 1)``-d. Both are meant for cosine (inner
    product of L2-normalised descriptors), which is what ``embed`` and the place database use.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        grid = cfg.scan_context
        if grid.channels != ("max_height",):
            raise ValueError(f"{self.kind} reads a max-height-only grid, got channels {grid.channels}")
        self.input_spec = InputSpec(("cloud",), self.descriptor_dim(grid), bev=grid)

    @staticmethod
    def descriptor_dim(grid: PolarConfig) -> int:
        raise NotImplementedError

    @staticmethod
    def describe_grids(grids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, cloud: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if not isinstance(cloud, torch.Tensor) or cloud.ndim != 4 or cloud.shape[1] != 1:
            raise ValueError(f"{self.kind} takes Scan Context grids B x 1 x R x S (cloud_to_bev with "
                             "cfg.scan_context)")
        descriptor = self.describe_grids(cloud[:, 0].detach().cpu().numpy())
        return {"fused": torch.from_numpy(np.ascontiguousarray(descriptor, dtype=np.float32))}


class RingKeyModel(ClassicalModel):
    """Scan Context's ring key as a model kind (``rings``-d)."""

    kind = "ring_key"
    descriptor_dim = staticmethod(lambda grid: grid.rings)
    describe_grids = staticmethod(ring_key)


class ScanContextFftModel(ClassicalModel):
    """FFT magnitude of the Scan Context rings over the sectors as a model kind (``R * (S // 2 + 1)``-d)."""

    kind = "scan_context_fft"
    descriptor_dim = staticmethod(lambda grid: grid.rings * (grid.sectors // 2 + 1))
    describe_grids = staticmethod(fft_descriptor)


#: The no-training model kinds, by name (``vpr.build_model`` builds them too).
CLASSICAL_MODELS: dict[str, type[ClassicalModel]] = {"ring_key": RingKeyModel, "scan_context_fft": ScanContextFftModel}
