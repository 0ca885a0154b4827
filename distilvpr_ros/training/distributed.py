"""Multi-process / multi-machine training on ``torch.distributed`` (DDP, gloo backend on CPU).

Launch the ordinary ``distilvpr`` command under ``torchrun``; it detects ``WORLD_SIZE > 1`` from the
environment (distributed runs need ``--out``: every rank must write to the same run folder)::

    torchrun --standalone --nproc_per_node 2 -m distilvpr_ros.cli train-teacher --config cfg.yaml --out runs/t
    # several machines: --nnodes N --node_rank R --master_addr HOST --master_port PORT instead of --standalone

Design: **the loss is the single-process loss of the whole sampler batch.**

* Every rank draws the same sampler batch (same seed and epoch) and embeds only its contiguous slice
  (``shard``; the batch size must divide by the world size). Pairs stay together when the slice size
  is even.
* The slices' descriptors are all-gathered in rank order (``gather_batch``), which rebuilds the batch
  exactly; the geographic masks, batch-hard mining, triplet and distillation losses are computed over
  the global batch, identically on every rank (the teacher cache and masks are indexed by the global
  batch). Relational distillation losses (B×B and B³ relations) therefore see the same batch as in one
  process, which plain per-rank losses would not.
* The gather passes back only the local slice's gradient: each rank back-propagates the global loss
  through its own samples. DDP averages gradients over ranks, so the loss is multiplied by the world
  size before ``backward`` (``loss_scale``); the summed per-rank contributions are then exactly the
  single-process gradient.
* BatchNorm layers in training mode use the statistics of the global batch (``GlobalBatchNorm2d``,
  since torch's ``SyncBatchNorm`` is GPU-only): per-channel sums are all-reduced with autograd, so
  forward values, running statistics and gradients match one process. Frozen (eval-mode) BatchNorm is
  untouched.
* These collectives use a process group of their own, so they never interleave with DDP's gradient
  all-reduce on the default group.
* Only rank 0 validates, logs and writes checkpoints; the others wait at a barrier.

With these, per-step losses and weights match a single-process run up to float rounding (the test
checks rtol 1e-4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``; ``group`` carries the loss collectives."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Factor on the global loss before ``backward`` (DDP averages the per-rank gradients)."""
        return float(self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed() -> DistEnv:
    """Join the process group named by the torchrun environment (``WORLD_SIZE``, ``RANK``, ``MASTER_*``).

    Returns a single-process ``DistEnv`` when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), group=dist.new_group(backend="gloo"))


def shutdown_distributed(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: list[int], env: DistEnv) -> list[int]:
    """This rank's contiguous slice of a global batch."""
    if len(batch) % env.world_size:
        raise ValueError(f"batch of {len(batch)} does not split over {env.world_size} ranks")
    size = len(batch) // env.world_size
    return batch[env.rank * size : (env.rank + 1) * size]


class _GatherLocalGrad(torch.autograd.Function):
    """All-gather equal slices in rank order; backward returns the local slice of the gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, env: DistEnv) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(env.world_size)]
        dist.all_gather(parts, local.contiguous(), group=env.group)
        ctx.rows = (env.rank * len(local), (env.rank + 1) * len(local))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start, stop = ctx.rows
        return grad[start:stop], None


def gather_batch(outputs: dict[str, torch.Tensor], env: DistEnv) -> dict[str, torch.Tensor]:
    """The global batch of every output head, from each rank's slice (identity in one process)."""
    if not env.distributed:
        return outputs
    return {key: _GatherLocalGrad.apply(value, env) for key, value in outputs.items()}


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = local.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics cover the batch of every rank (CPU, gloo).

    Mean and biased variance normalise, the running variance is the unbiased estimate, as in
    ``BatchNorm2d``; the per-channel sums are all-reduced with autograd so gradients flow across ranks.
    """

    group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size(self.group) > 1):
            return super().forward(x)
        channels = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        dist.all_reduce(count, group=self.group)
        mean = _AllReduceSum.apply(x.sum(channels), self.group) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply(centred.pow(2).sum(channels), self.group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        out = centred / torch.sqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def convert_global_batchnorm(module: nn.Module, env: DistEnv) -> nn.Module:
    """Turn every trainable ``BatchNorm2d`` into a ``GlobalBatchNorm2d``.

    The class of the existing object is switched, so parameters, buffers and references held elsewhere
    (the image encoder's stage lists) stay valid. Frozen BatchNorms (no parameter requires grad) keep
    their fixed statistics and stay as they are.
    """
    for name, child in module.named_children():
        trainable = any(p.requires_grad for p in child.parameters(recurse=False))
        if type(child) is nn.BatchNorm2d and trainable:
            child.__class__ = GlobalBatchNorm2d
            child.group = env.group
        else:
            convert_global_batchnorm(child, env)
    return module


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """The module to train with: ``model`` itself in one process, else DDP over it with global BatchNorm.

    Buffers are synchronised once at construction only (global BatchNorm keeps them identical).
    """
    if not env.distributed:
        return model
    convert_global_batchnorm(model, env)
    return DistributedDataParallel(model, forward_sync_buffers=False)
