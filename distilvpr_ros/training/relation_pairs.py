"""Which pairs of a training batch the relational distillation terms use (``distill.relation_pairs``).

A yaw-invariant teacher relates views a forward camera cannot relate: two frames at one place driven
in opposite directions look alike to a 360° LiDAR and unrelated to the camera. Distilling that relation
asks the camera for the impossible. ``relation_pairs`` restricts (or down-weights) the self- and
cross-agent relations of DistilVPR to pairs where the relation means something to the student:

* ``all``: every pair (the reference; no pair weights are passed, the maths is unchanged);
* ``same_direction``: pairs whose headings differ by at most ``relation_heading_deg`` (90°);
* ``visible``: pairs that share visible structure (``data.visibility.VisibleStructure``, symmetric):
  the world's ray-cast ground truth when the training runs belong to a generated world whose
  visibility cache exists (it is never computed here: ``distilvpr evaluate`` or the visibility
  benchmark writes it), else the pose-only proxy (within ``relation_visible_m`` and headings within
  ``relation_heading_deg``), which works for any dataset with poses. ``visibility_fn`` is the one place
  that chooses; a test or a caller can pass any ``mask(frames) -> (B, B) bool`` over ``(sequence,
  position)`` frames instead.

Pairs outside the mask get weight ``relation_other_weight`` (0: left out), pairs inside weight 1; a
frame with itself is always inside. Headings come from the frames' poses (yaw of the body x axis).
"""

from __future__ import annotations

from typing import Callable

import logging

import numpy as np
import torch

from ..data.visibility import VisibilityConfig, VisibleStructure

log = logging.getLogger(__name__)

RELATION_PAIRS = ("all", "same_direction", "visible")

#: ``mask(frames (B, 2) of (sequence, position)) -> (B, B) bool``: pairs sharing visible structure.
VisibilityFn = Callable[[np.ndarray], np.ndarray]


def frame_headings(sequences) -> np.ndarray:
    """Yaw (radians) of every frame of some sequences, in order: atan2 of the pose's body x axis."""
    poses = np.concatenate([np.asarray(seq.poses) for seq in sequences])
    return np.arctan2(poses[:, 1, 0], poses[:, 0, 0])


def same_direction(headings: np.ndarray, max_deg: float = 90.0) -> np.ndarray:
    """(B, B) bool: heading difference (wrapped to [0°, 180°]) at most ``max_deg``."""
    diff = np.abs(np.angle(np.exp(1j * (headings[:, None] - headings[None, :]))))
    return diff <= np.radians(max_deg) + 1e-9


def visibility_fn(sequences, distill_cfg) -> VisibilityFn:
    """The ``visible`` mask of batches of these sequences' frames: ``VisibleStructure.mask`` (world
    ground truth from an existing cache, else the pose proxy with the ``relation_*`` thresholds)."""
    cfg = VisibilityConfig(proxy_distance_m=distill_cfg.relation_visible_m,
                           proxy_heading_deg=distill_cfg.relation_heading_deg)
    structure = VisibleStructure.from_sequences(sequences, cfg, compute=False)
    log.info("relation_pairs=visible from %s", structure.source)
    return structure.mask


class RelationPairs:
    """Pair weights of training batches, from the training frames' positions and headings.

    Args:
        mode: one of ``RELATION_PAIRS``.
        positions: (N, 2) planar positions of the training elements.
        headings: (N,) yaw of the training elements (radians).
        other_weight: weight of pairs outside the mask.
        heading_deg: threshold of ``same_direction``.
        frames: (N, 2) ``(sequence, position)`` of the training elements (for ``visibility_fn``).
        visibility_fn: the ``visible`` mask of a batch's frames (required for ``visible``).
    """

    def __init__(self, mode: str, positions: np.ndarray, headings: np.ndarray, other_weight: float = 0.0,
                 heading_deg: float = 90.0, visibility_fn: VisibilityFn | None = None,
                 frames: np.ndarray | None = None):
        if mode not in RELATION_PAIRS:
            raise ValueError(f"relation_pairs must be one of {RELATION_PAIRS}, got {mode!r}")
        self.mode = mode
        self.positions = np.asarray(positions, dtype=float)[:, :2]
        self.headings = np.asarray(headings, dtype=float)
        self.other_weight = float(other_weight)
        self.heading_deg = heading_deg
        self.frames = None if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1, 2)
        if mode == "visible" and (visibility_fn is None or self.frames is None):
            raise ValueError("relation_pairs=visible needs a visibility_fn and the elements' frames")
        self.visibility_fn = visibility_fn

    @classmethod
    def from_config(cls, distill_cfg, sequences, visibility: VisibilityFn | None = None) -> "RelationPairs":
        """From a ``DistillConfig`` and the training sequences (element order = the training store's);
        ``visible`` uses ``visibility`` or else ``visibility_fn(sequences, distill_cfg)``."""
        positions = np.concatenate([np.asarray(seq.poses)[:, :2, 3] for seq in sequences])
        frames = np.array([(s, i) for s, seq in enumerate(sequences) for i in range(len(seq))], dtype=np.int64)
        if distill_cfg.relation_pairs == "visible" and visibility is None:
            visibility = visibility_fn(sequences, distill_cfg)
        return cls(distill_cfg.relation_pairs, positions, frame_headings(sequences),
                   distill_cfg.relation_other_weight, distill_cfg.relation_heading_deg, visibility, frames)

    def mask(self, indices) -> np.ndarray:
        """(B, B) bool: the pairs of a batch inside the mask (the diagonal always)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.mode == "all":
            inside = np.ones((len(idx), len(idx)), dtype=bool)
        elif self.mode == "same_direction":
            inside = same_direction(self.headings[idx], self.heading_deg)
        else:
            inside = np.asarray(self.visibility_fn(self.frames[idx]), dtype=bool)
        return inside | np.eye(len(idx), dtype=bool)

    def weights(self, indices) -> torch.Tensor | None:
        """(B, B) float pair weights of a batch, or None for ``all`` (the unweighted reference maths)."""
        if self.mode == "all":
            return None
        inside = self.mask(indices)
        return torch.from_numpy(np.where(inside, 1.0, self.other_weight).astype(np.float32))
