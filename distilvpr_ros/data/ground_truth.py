"""Place ground truth from poses, and the cross-run query/database protocol.

Training (PointNetVLAD / DistilVPR): two frames are *positives* within ``positive_m`` (10 m) and
*non-negatives* within ``non_negative_m`` (50 m); everything farther is a negative. Evaluation: a
retrieval is correct within ``correct_m`` (25 m); each run serves in turn as the database for the
queries of every other run (cross-run evaluation, AR@1 = mean over ordered run pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..config import GroundTruthConfig
from .sample import Sequence


def neighbours_within(positions: np.ndarray, radius: float, exclude_self: bool = True) -> list[np.ndarray]:
    """For every point, the sorted indices of points within ``radius`` (planar, metres)."""
    positions = np.asarray(positions, dtype=float)
    tree = cKDTree(positions)
    out = []
    for i, idx in enumerate(tree.query_ball_point(positions, r=radius)):
        idx = np.asarray(sorted(idx), dtype=np.int64)
        out.append(idx[idx != i] if exclude_self else idx)
    return out


@dataclass
class TrainingGroundTruth:
    """Positives and non-negatives of every training element (indices into ``positions``)."""

    positions: np.ndarray  # (N, 2)
    positives: list[np.ndarray]
    non_negatives: list[np.ndarray]

    @classmethod
    def from_positions(cls, positions: np.ndarray, cfg: GroundTruthConfig | None = None) -> "TrainingGroundTruth":
        cfg = cfg or GroundTruthConfig()
        positions = np.asarray(positions, dtype=float)[:, :2]
        return cls(
            positions=positions,
            positives=neighbours_within(positions, cfg.positive_m),
            non_negatives=neighbours_within(positions, cfg.non_negative_m),
        )

    def __len__(self) -> int:
        return len(self.positions)

    def batch_masks(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Boolean (B, B) positive and negative masks for a batch of element indices.

        ``pos[i, j]``: j is a positive of i (never i itself); ``neg[i, j]``: j is farther than the
        non-negative radius from i.
        """
        idx = np.asarray(indices, dtype=np.int64)
        pos = np.zeros((len(idx), len(idx)), dtype=bool)
        nonneg = np.eye(len(idx), dtype=bool)
        for a, i in enumerate(idx):
            pos[a] = np.isin(idx, self.positives[i])
            nonneg[a] |= np.isin(idx, self.non_negatives[i])
        return pos, ~nonneg


@dataclass
class RunPair:
    """One ordered (database run, query run) evaluation pair."""

    database: int  # index of the database sequence
    query: int  # index of the query sequence
    true_matches: list[np.ndarray]  # per query frame: database indices within correct_m

    @property
    def evaluable(self) -> np.ndarray:
        """Query indices with at least one true match (the others are skipped, as in PointNetVLAD)."""
        return np.array([i for i, m in enumerate(self.true_matches) if len(m)], dtype=np.int64)


def cross_run_pairs(sequences: list[Sequence], cfg: GroundTruthConfig | None = None) -> list[RunPair]:
    """Every ordered pair of distinct runs with its per-query true matches."""
    cfg = cfg or GroundTruthConfig()
    pos = [np.asarray(s.poses)[:, :2, 3] for s in sequences]
    trees = [cKDTree(p) if len(p) else None for p in pos]
    pairs = []
    for d, tree in enumerate(trees):
        for q in range(len(sequences)):
            if q == d or tree is None or not len(pos[q]):
                continue
            hits = tree.query_ball_point(pos[q], r=cfg.correct_m)
            pairs.append(RunPair(d, q, [np.asarray(sorted(h), dtype=np.int64) for h in hits]))
    return pairs
