"""BatchNorm over the whole batch of a data-parallel step, on any device (`--sync-bn`).

PyTorch's `SyncBatchNorm` runs on GPUs only. This one all-reduces the per-channel sums (forward)
and the gradient sums (backward) through the default process group, so N ranks normalise with
the statistics one process would compute on the whole batch. Its backward also undoes the
data-parallel weighting: the trainer scales each rank's gradients by its share of the batch after
the backward (`PackedGradients`), so the input gradient returned here is the whole batch's loss
gradient divided by that share, exact for uneven parts too. Parameters and buffers keep their
names: checkpoints are those of `nn.BatchNorm2d`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mest_compile.algorithms.lost_ranks import collective


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                running_var: torch.Tensor, eps: float, momentum: float) -> torch.Tensor:
        channels = x.shape[1]
        local = x.numel() // channels
        # float64 sums: the variance from sums of squares keeps float32's precision.
        values = x.transpose(0, 1).reshape(channels, -1).double()
        stats = torch.cat([values.sum(1), (values * values).sum(1), values.new_tensor([local])])
        collective("the BatchNorm statistics' all-reduce", lambda: dist.all_reduce(stats))
        total = float(stats[-1])
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_(min=0)
        invstd = (var + eps).rsqrt()
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = var * total / max(total - 1, 1)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = (1, channels, 1, 1)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.to(x.dtype).view(shape)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        ctx.share = local / total
        ctx.total = total
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat, weight, invstd = ctx.saved_tensors
        channels, shape = xhat.shape[1], (1, xhat.shape[1], 1, 1)
        # This rank's loss is the mean over its part: its share of the whole batch's mean loss.
        grad = dy * ctx.share
        sums = torch.cat([grad.sum((0, 2, 3)), (grad * xhat).sum((0, 2, 3))]).double()
        collective("the BatchNorm gradients' all-reduce", lambda: dist.all_reduce(sums))
        mean_grad = (sums[:channels] / ctx.total).to(dy.dtype).view(shape)
        mean_grad_xhat = (sums[channels:] / ctx.total).to(dy.dtype).view(shape)
        dx = (weight * invstd).view(shape) * (grad - mean_grad - xhat * mean_grad_xhat)
        # Returned per this rank's loss: the trainer multiplies every gradient by the share afterwards.
        return (dx / ctx.share, (dy * xhat).sum((0, 2, 3)), dy.sum((0, 2, 3)), None, None, None, None)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training forward normalises over every rank's part of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return _SyncBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, momentum)


def convert_sync_batchnorm_(model: nn.Module) -> int:
    """Make every affine, tracking `nn.BatchNorm2d` of `model` a `SyncBatchNorm2d`, in place.

    The parameters and buffers stay the same tensors (an optimizer built before keeps working).
    Returns how many were converted.
    """
    converted = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d and module.affine and module.track_running_stats:
            module.__class__ = SyncBatchNorm2d  # same attributes, new forward: nothing to copy
            converted += 1
    return converted
