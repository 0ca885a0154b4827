"""Generalised-mean (GeM) pooling of 2D feature maps (Radenović et al.), as used by DistilVPR.

``GeM(x) = (mean_{h,w} clamp(x, eps)^p)^(1/p)`` per channel: p = 1 is average pooling and p → ∞ tends
to max pooling. p is learnable (init 3, eps 1e-6, reference §2.1). Only ONNX-friendly ops are used.
"""

from __future__ import annotations

import torch
from torch import nn

GEM_P_INIT = 3.0
GEM_EPS = 1e-6


class GeM(nn.Module):
    """GeM pooling ``(B, C, H, W) -> (B, C)`` with a learnable exponent ``p``."""

    def __init__(self, p: float = GEM_P_INIT, eps: float = GEM_EPS, learnable: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"
