"""Task supervision for ``trainer.fit``: which batches an epoch draws and which task loss they feed.

A task owns its batch composition, its loss, any parameters of its own (classifiers, with their own
optimizers) and its per-epoch work (MutualVPR re-clusters at the start of each epoch):

* ``TripletTask`` — the learning core's supervision: ``PairBatchSampler`` batches (B/2 anchors with one
  positive each) and the batch-hard triplet loss on geographic masks (``reference/distilvpr.md`` §3.1).
* ``training.mutual.ClassificationTask`` — CosFace on geographic classes: MutualVPR view clusters
  (K = 1 gives one class per cell) or CosPlace heading bins (``reference/mutualvpr.md``).

``make_task(cfg, data, heads)`` picks one from ``cfg.loss.task``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from ..data.samplers import PairBatchSampler
from ..losses import MultiHeadTripletLoss

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .trainer import TrainingData


@dataclass
class TaskBatch:
    """One step's global batch: training-element indices and, for classification, their class labels."""

    indices: list[int]
    labels: np.ndarray | None = None


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


def make_task(cfg: "TrainConfig", data: "TrainingData", heads: Mapping[str, float], model):
    """The task ``cfg.loss.task`` names, weighting ``model``'s output heads by ``heads``."""
    if cfg.loss.task == "triplet":
        return TripletTask(cfg, data, heads)
    from .mutual import ClassificationTask

    return ClassificationTask(cfg, data, heads, model)
