"""What ``trainer.fit`` needs from a task: the :class:`Task` protocol and the batches it draws (:class:`TaskBatch`).

A task owns its batch composition, its loss, any parameters of its own (classifiers, with their own
optimizers) and its per-epoch work (MutualVPR re-clusters at the start of each epoch). The trainer knows
tasks only through this protocol; the tasks know the trainer only through the data they are given
(``training.data.TrainingData``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..data import TrainingData
    from ..distributed import DistEnv


@dataclass
class TaskBatch:
    """One step's global batch: training-element indices and, for classification, their class labels."""

    indices: list[int]
    labels: np.ndarray | None = None


@runtime_checkable
class Task(Protocol):
    """Batches, task loss and per-epoch work of one kind of supervision."""

    #: Batches without any (anchor, positive, negative) triplet are skipped before the forward.
    needs_triplets: bool

    def start_epoch(self, epoch: int, model: torch.nn.Module, data: "TrainingData", env: "DistEnv") -> dict[str, Any]:
        """Per-epoch work before the epoch's batches are drawn; returns diagnostics for the history."""
        ...

    def batches(self, epoch: int) -> list[TaskBatch]:
        """The epoch's global batches, in step order."""
        ...

    def loss(self, outputs: dict[str, torch.Tensor], batch: TaskBatch, pos: torch.Tensor,
             neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Task loss of the global batch's outputs (``pos`` / ``neg``: geographic masks) and its logged terms."""
        ...

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of the task's own parameters that step with the model's."""
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...

    def write_diagnostics(self, run_dir: Path) -> None:
        """Task-specific plots into the run folder (after each epoch, on rank 0)."""
        ...
