"""Large Margin Cosine Loss (CosFace / LMCL), the classifier of CosPlace and MutualVPR.

For a descriptor f with label y and class weights W_j: cos θ_j = W_jᵀf / (‖W_j‖‖f‖), logits
z_j = s·(cos θ_j − m·[j = y]), loss = cross-entropy(z, y). Weights are initialised Xavier-uniform.
Defaults are MutualVPR's released code (``reference/mutualvpr.md`` §2.6): s = 60, m = 0.5; CosPlace
uses s = 30, m = 0.4. Equal to pytorch-metric-learning's ``CosFaceLoss`` with the same weights (tested);
kept as a module of our own because the classifier rows are read and re-ordered by the view-cluster
alignment (``training.tasks.classification``) and each place group has its own classifier and optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COSFACE_SCALE = 60.0
COSFACE_MARGIN = 0.5


class CosFaceClassifier(nn.Module):
    """``forward(embeddings, labels) -> loss``; ``weight`` is ``num_classes x dim``."""

    def __init__(self, num_classes: int, dim: int, scale: float = COSFACE_SCALE, margin: float = COSFACE_MARGIN):
        super().__init__()
        if num_classes < 1:
            raise ValueError("a classifier needs at least one class")
        self.scale = float(scale)
        self.margin = float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``B x num_classes`` cosine similarities to the class weights."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        margin = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype) * self.margin
        return self.scale * (cosine - margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
