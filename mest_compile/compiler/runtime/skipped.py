"""Counts of the backward kernels a training forward will not need (frozen layers, SpFDE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mest_compile.sparsity.module import SparseConv2d


@dataclass
class SkippedKernels:
    """Training forwards whose backward skips a kernel.

    Autograd asks the packed op for a weight gradient only when the weight requires grad, and for
    an input gradient only when the input does: a frozen layer runs no wgrad kernel, and the first
    trainable layer (its input comes from frozen layers or is the data) no dgrad kernel.
    """

    wgrad_skipped: int = 0
    dgrad_skipped: int = 0

    def observe(self, module: SparseConv2d, x: torch.Tensor) -> None:
        """Count the kernels the backward of this forward of `module` on `x` will skip."""
        if module.training and torch.is_grad_enabled():
            self.wgrad_skipped += not module.weight.requires_grad
            self.dgrad_skipped += not x.requires_grad
