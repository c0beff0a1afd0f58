"""The packed values of a weight: the one differentiable gather the formats share."""

from __future__ import annotations

import torch


def gather_flat(weight: torch.Tensor, flat_idx: torch.Tensor, nnz: int) -> torch.Tensor:
    """`weight.view(-1)[flat_idx[:nnz]]`, shaped like `flat_idx[:nnz]`; differentiable.

    One `index_select` over the flattened index instead of advanced indexing: its backward is a
    zero fill plus `index_add_` rather than an accumulating `index_put_` (measured on a 128x128x3x3
    layer at 90% sparsity: 12 vs 50 us forward, 40 vs 70-100 us backward, per call).
    """
    rows = flat_idx[:nnz].to(weight.device)  # the format's indices live on the CPU; a CUDA weight gathers there
    return weight.reshape(-1).index_select(0, rows.reshape(-1)).view(rows.shape)


def scatter_flat(values_grad: torch.Tensor, flat_idx: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat dense gradient that `gather_flat`'s backward builds from `values_grad` (for timing
    the weight-gradient phase with what training pays around the kernel)."""
    rows = flat_idx[: values_grad.shape[0]].to(values_grad.device)
    return values_grad.new_zeros(numel).index_add_(0, rows.reshape(-1), values_grad.reshape(-1))
