"""``TripletTask``: ``PairBatchSampler`` batches (B/2 anchors with one positive each) and the multi-head
batch-hard triplet loss on geographic masks (``reference/distilvpr.md`` §3.1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from ...data.samplers import PairBatchSampler
from ...losses import MultiHeadTripletLoss
from .base import TaskBatch

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import TrainingData


class TripletTask:
    """Pair batches + multi-head batch-hard triplet loss (batches without a triplet are skipped)."""

    needs_triplets = True

    def __init__(self, cfg: "TrainConfig", data: "TrainingData", heads: Mapping[str, float]):
        self.sampler = PairBatchSampler(data.ground_truth, cfg.optim.batch_size, seed=cfg.seed)
        if len(self.sampler) == 0:
            raise ValueError(f"too few training pairs for one batch of {cfg.optim.batch_size}")
        self.triplet = MultiHeadTripletLoss(heads, margin=cfg.loss.margin)

    def start_epoch(self, epoch: int, model, data, env) -> dict[str, float]:
        self.sampler.set_epoch(epoch)
        return {}

    def batches(self, epoch: int) -> list[TaskBatch]:
        self.sampler.set_epoch(epoch)
        return [TaskBatch(list(batch)) for batch in self.sampler]

    def loss(self, outputs: dict[str, torch.Tensor], batch: TaskBatch, pos: torch.Tensor, neg: torch.Tensor):
        return self.triplet(outputs, pos, neg)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def write_diagnostics(self, run_dir: Path) -> None:
        pass
