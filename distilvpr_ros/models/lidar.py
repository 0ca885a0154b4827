"""LiDAR encoder for CPU: a bird's-eye-view (BEV) pseudo-image, a small 2D CNN, a 1x1 conv and GeM.

DistilVPR's teacher uses a MinkowskiEngine sparse 3D CNN (reference §2.1), which does not run here. This
encoder keeps its interface (raw cloud in, GeM-pooled descriptor out, default 128-d) with dense 2D ops:

1. ``bev_from_points`` rasterises a padded batch of clouds into ``B x 3 x cells x cells`` (max height,
   log density, mean intensity; see ``preprocess.cloud_to_bev`` for the exact maths, which this function
   reproduces in torch with scatter ops). Empty, all-NaN or out-of-range clouds give zeros.
2. ``LidarEncoder`` runs conv-BN-ReLU stages (each halving the resolution) → 1x1 conv → GeM.

``LidarEncoder.forward`` takes either a precomputed BEV tensor ``B x 3 x cells x cells`` (preferred for
training: compute it once per sample with ``preprocess.cloud_to_bev``) or raw clouds: a ``B x N x C``
tensor with an optional ``B x N`` validity mask, or a list of ``N_i x C`` arrays/tensors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import BEV_CHANNELS, BevConfig
from .pooling import GeM

X, Y, Z, INTENSITY = 0, 1, 2, 3
#: Columns kept when padding clouds: x, y, z, intensity (intensity 0 when a cloud has none).
PADDED_COLUMNS = 4

CloudInput = torch.Tensor | Sequence[np.ndarray | torch.Tensor]


def pad_clouds(clouds: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clouds of different sizes into ``B x N_max x 4`` float32 (x, y, z, intensity) plus a ``B x N_max`` mask."""
    tensors = [torch.as_tensor(c) for c in clouds]
    n_max = max((len(t) for t in tensors), default=0)
    points = torch.zeros(len(tensors), n_max, PADDED_COLUMNS, dtype=torch.float32)
    mask = torch.zeros(len(tensors), n_max, dtype=torch.bool)
    for i, cloud in enumerate(tensors):
        if len(cloud) == 0:
            continue
        if cloud.ndim != 2 or cloud.shape[1] < 3:
            raise ValueError(f"cloud {i}: expected N x C with C >= 3, got shape {tuple(cloud.shape)}")
        columns = min(cloud.shape[1], PADDED_COLUMNS)
        points[i, : len(cloud), :columns] = cloud[:, :columns].to(torch.float32)
        mask[i, : len(cloud)] = True
    return points, mask


def bev_from_points(points: CloudInput, mask: torch.Tensor | None = None, cfg: BevConfig | None = None) -> torch.Tensor:
    """BEV pseudo-images ``B x 3 x cells x cells`` of a batch of clouds (same maths as ``preprocess.cloud_to_bev``).

    Args:
        points: ``B x N x C`` (or ``N x C`` for one cloud) float tensor with columns x, y, z[, intensity, ...],
            or a list of ``N_i x C`` arrays/tensors (padded with ``pad_clouds``).
        mask: optional ``B x N`` bool tensor, False for padding.
        cfg: grid parameters.
    """
    cfg = cfg or BevConfig()
    if not isinstance(points, torch.Tensor):
        if mask is not None:
            raise ValueError("mask is only accepted with a padded tensor; lists are padded here")
        points, mask = pad_clouds(points)
    if points.ndim == 2:
        points = points.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if points.ndim != 3 or points.shape[-1] < 3:
        raise ValueError(f"expected B x N x C points with C >= 3, got shape {tuple(points.shape)}")
    batch, cells_per_map = points.shape[0], cfg.cells * cfg.cells
    points = points.to(torch.float32)
    f32 = dict(dtype=torch.float32, device=points.device)

    xyz = points[..., :3]
    usable = torch.isfinite(xyz).all(dim=-1)
    if mask is not None:
        usable &= mask.to(torch.bool)
    xyz = torch.where(usable.unsqueeze(-1), xyz, torch.zeros((), **f32))
    x, y, z = xyz.unbind(dim=-1)
    extent, cell = torch.tensor(cfg.extent_m, **f32), torch.tensor(cfg.cell_m, **f32)
    row = torch.floor((x + extent) / cell)
    col = torch.floor((y + extent) / cell)
    usable &= (x * x + y * y) >= torch.tensor(cfg.min_range_m**2, **f32)
    usable &= (row >= 0) & (row < cfg.cells) & (col >= 0) & (col < cfg.cells)

    # Unusable points go to one extra "dump" bin past the last cell, dropped at the end.
    offsets = torch.arange(batch, device=points.device).unsqueeze(1) * cells_per_map
    flat = (row * cfg.cells + col).to(torch.int64) + offsets
    dump = batch * cells_per_map
    flat = torch.where(usable, flat, torch.full_like(flat, dump)).reshape(-1)

    span = torch.tensor(cfg.z_max_m - cfg.z_min_m, **f32)
    height = ((z - torch.tensor(cfg.z_min_m, **f32)) / span).clamp(0.0, 1.0).reshape(-1)
    if points.shape[-1] > INTENSITY:
        raw = points[..., INTENSITY]
        raw = torch.where(torch.isfinite(raw), raw, torch.zeros((), **f32))
        intensity = (raw / torch.tensor(cfg.intensity_max, **f32)).clamp(0.0, 1.0).reshape(-1)
    else:
        intensity = torch.zeros_like(height)

    bins = dump + 1
    count = torch.zeros(bins, **f32).scatter_add_(0, flat, torch.ones_like(height))
    max_height = torch.zeros(bins, **f32).scatter_reduce_(0, flat, height, reduce="amax", include_self=True)
    intensity_sum = torch.zeros(bins, **f32).scatter_add_(0, flat, intensity)
    count, max_height, intensity_sum = count[:dump], max_height[:dump], intensity_sum[:dump]

    density = (torch.log1p(count) / torch.log1p(torch.tensor(cfg.density_saturation, **f32))).clamp(max=1.0)
    mean_intensity = intensity_sum / count.clamp(min=1.0)
    bev = torch.stack([max_height, density, mean_intensity], dim=0)
    return bev.reshape(len(BEV_CHANNELS), batch, cfg.cells, cfg.cells).transpose(0, 1).contiguous()


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LidarEncoder(nn.Module):
    """BEV → conv stages (each: stride-2 conv-BN-ReLU, then conv-BN-ReLU) → 1x1 conv → GeM → ``out_dim``.

    With the default three stages a 64 x 64 grid ends at 8 x 8 (stride 8).
    """

    def __init__(self, out_dim: int = 128, bev: BevConfig | None = None, channels: Sequence[int] = (32, 64, 128)):
        super().__init__()
        self.bev_cfg = bev or BevConfig()
        self.out_dim = out_dim
        layers: list[nn.Module] = [conv_bn_relu(len(BEV_CHANNELS), channels[0])]
        in_channels = channels[0]
        for width in channels:
            layers += [conv_bn_relu(in_channels, width, stride=2), conv_bn_relu(width, width)]
            in_channels = width
        self.backbone = nn.Sequential(*layers)
        self.proj = nn.Conv2d(in_channels, out_dim, kernel_size=1)
        self.pool = GeM()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        return self.bev_cfg.shape

    def to_bev(self, cloud: CloudInput, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pass a ``B x 3 x cells x cells`` BEV through (shape-checked); rasterise anything else."""
        if isinstance(cloud, torch.Tensor) and cloud.ndim == 4:
            if not torch.jit.is_tracing() and tuple(cloud.shape[1:]) != self.bev_shape:
                raise ValueError(f"BEV input must be B x {self.bev_shape}, got {tuple(cloud.shape)}")
            return cloud
        return bev_from_points(cloud, mask, self.bev_cfg)

    def forward(self, cloud: CloudInput, mask: torch.Tensor | None = None) -> torch.Tensor:
        bev = self.to_bev(cloud, mask)
        return self.pool(self.proj(self.backbone(bev)))
