"""The contract every distillation loss of the package follows.

A distillation loss is an ``nn.Module`` called as ``loss(student, teacher, pos_mask=None,
neg_mask=None)`` on (B, D) final descriptors. It returns ``(loss, terms)``: a scalar tensor to add to
the task loss, and a dict of plain floats naming its parts, for logging. The teacher never receives
gradients: every loss detaches it first. The geographic masks (B×B bool, the same ones the triplet
loss mines with) are passed to every loss so a trainer can call all of them alike; only the losses
that need them (LSD) read them.
"""

from __future__ import annotations

import torch
from torch import nn


class DistillLoss(nn.Module):
    """Base class fixing the call signature; subclasses implement ``forward``."""

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        pos_mask: torch.Tensor | None = None,
        neg_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def to_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detach a dict of scalar tensors into plain floats for logging."""
    return {name: float(value.detach()) for name, value in terms.items()}
