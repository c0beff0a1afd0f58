"""The packed values of a weight: the one differentiable gather the formats share.

Formats keep their index tensors on the CPU (they are packed and repacked there); a weight on
another device gathers through `on_device`'s copy of them, made once per device and refill.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

#: index tensor -> (its version when copied, device, the copy)
_COPIES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def on_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`indices` on `device`, copied once: again only after `indices` changed in place (a repack
    bumps its version counter), so a CUDA training step moves no index per call."""
    if indices.device == device:
        return indices
    hit = _COPIES.get(indices)
    if hit is None or hit[0] != indices._version or hit[1] != device:
        hit = (indices._version, device, indices.to(device))
        _COPIES[indices] = hit
    return hit[2]


def gather_flat(weight: torch.Tensor, flat_idx: torch.Tensor, nnz: int) -> torch.Tensor:
    """`weight.view(-1)[flat_idx[:nnz]]`, shaped like `flat_idx[:nnz]`; differentiable.

    One `index_select` over the flattened index instead of advanced indexing: its backward is a
    zero fill plus `index_add_` rather than an accumulating `index_put_` (measured on a 128x128x3x3
    layer at 90% sparsity: 12 vs 50 us forward, 40 vs 70-100 us backward, per call).
    """
    rows = on_device(flat_idx, weight.device)[:nnz]
    return weight.reshape(-1).index_select(0, rows.reshape(-1)).view(rows.shape)


def scatter_flat(values_grad: torch.Tensor, flat_idx: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat dense gradient that `gather_flat`'s backward builds from `values_grad` (for timing
    the weight-gradient phase with what training pays around the kernel)."""
    rows = on_device(flat_idx, values_grad.device)[: values_grad.shape[0]]
    return values_grad.new_zeros(numel).index_add_(0, rows.reshape(-1), values_grad.reshape(-1))
