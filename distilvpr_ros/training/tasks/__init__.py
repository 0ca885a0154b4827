"""Task supervision for ``trainer.fit``: which batches an epoch draws and which task loss they feed.

* :class:`~.base.Task` — the protocol the trainer uses, and :class:`~.base.TaskBatch`;
* :class:`~.triplet.TripletTask` — the learning core's supervision: ``PairBatchSampler`` batches (B/2
  anchors with one positive each) and the batch-hard triplet loss on geographic masks
  (``reference/distilvpr.md`` §3.1);
* :class:`~.classification.ClassificationTask` — CosFace on geographic classes (:mod:`.geo_classes`):
  MutualVPR view clusters (K = 1 gives one class per cell) or CosPlace heading bins
  (``reference/mutualvpr.md``).

``make_task(cfg, data, heads, model)`` picks one from ``cfg.loss.task``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .base import Task, TaskBatch
from .classification import ClassificationTask
from .triplet import TripletTask

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import TrainingData

__all__ = ["ClassificationTask", "Task", "TaskBatch", "TripletTask", "make_task"]


def make_task(cfg: "TrainConfig", data: "TrainingData", heads: Mapping[str, float], model) -> Task:
    """The task ``cfg.loss.task`` names, weighting ``model``'s output heads by ``heads``."""
    if cfg.loss.task == "triplet":
        return TripletTask(cfg, data, heads)
    return ClassificationTask(cfg, data, heads, model)
