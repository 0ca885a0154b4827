"""DistilVPR's (MinkLoc's) pair batch sampler: each batch is B/2 anchors, each with one positive.

Usable as ``torch.utils.data.DataLoader(dataset, batch_sampler=PairBatchSampler(...))``; it has no
torch dependency itself. Positives come from the ground truth's positions; frames of several towns
(``data.synthetic.load_worlds``) lie 100 km apart, so a pair never spans two towns.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .ground_truth import TrainingGroundTruth


class PairBatchSampler:
    """Batches of ``batch_size`` indices made of (anchor, positive) pairs.

    Per epoch every element with at least one positive is used as an anchor at most once. A positive
    not yet used this epoch is preferred; anchors without positives are never drawn. The last,
    incomplete batch is dropped unless ``drop_last`` is False. Deterministic for a given seed and
    epoch (``set_epoch``).
    """

    def __init__(self, gt: TrainingGroundTruth, batch_size: int = 128, seed: int = 0, drop_last: bool = True):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be an even number >= 2, got {batch_size}")
        self.gt = gt
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._anchors = np.array([i for i in range(len(gt)) if len(gt.positives[i])], dtype=np.int64)
        if len(self._anchors) == 0:
            raise ValueError("no element has a positive: cannot build pair batches")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        unused = set(self._anchors.tolist())
        batches, batch = [], []
        for a in rng.permutation(self._anchors).tolist():
            if a not in unused:
                continue
            unused.discard(a)
            cands = self.gt.positives[a]
            fresh = [p for p in cands.tolist() if p in unused]
            p = int(rng.choice(fresh if fresh else cands))
            unused.discard(p)
            batch += [a, p]
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch = []
        if batch and not self.drop_last:
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
