"""The compiled step's arrays, and how they move to and from a PyTorch model and its SGD optimizer.

Dense parameters, running statistics and masks are copied as they are. A compiled sparse layer's
weight and momentum are packed: `values` holds the kept weights in kernel order, padded with zero
rows to the format's capacity, and unpacking scatters them back (zero outside the mask), which is
what masked training keeps there anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.step.build import Argument
from mest_compile.sparsity.module import SparseConv2d


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(a if isinstance(a, np.ndarray) else a.numpy())


def padded(values: torch.Tensor, capacity: int) -> torch.Tensor:
    """`values` with zero rows appended up to `capacity` rows."""
    out = values.new_zeros((capacity, *values.shape[1:]))
    out[: values.shape[0]] = values
    return out


def pack_tensor(arg: Argument, tensors: Mapping[str, torch.Tensor], layers: Mapping[str, SparseConv2d],
                formats: Mapping[str, PackedFormat], capacity: Mapping[str, int], source: torch.Tensor | None = None
                ) -> np.ndarray:
    """The array of step argument `arg` from the model (`source` replaces a trainable's tensor: its momentum)."""
    if arg.kind == "values":
        weight = source if source is not None else layers[arg.name].weight
        return _array(padded(formats[arg.name].values(weight.detach()), capacity[arg.name]))
    if arg.kind == "rows":
        fmt = formats[arg.name]
        rows = torch.zeros(capacity[arg.name], *([1] * (fmt.values(layers[arg.name].weight.detach()).dim() - 1)))
        rows[: fmt.nnz] = 1.0
        return _array(rows)
    if arg.kind == "buffer":
        return _array(getattr(formats[arg.name], arg.field))
    if arg.kind == "mask":
        return _array(layers[arg.name].mask.float())
    return _array(source if source is not None else tensors[arg.name])


def unpack_tensor(arg: Argument, array: Any, layers: Mapping[str, SparseConv2d],
                  formats: Mapping[str, PackedFormat]) -> torch.Tensor:
    """The model-shaped tensor of a trainable argument's array (values scatter back into the dense weight)."""
    value = _tensor(array)
    if arg.kind == "values":
        fmt = formats[arg.name]
        return fmt.dense_grad(value[: fmt.nnz], layers[arg.name].weight)
    return value


def momentum_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """SGD's momentum buffer of `param` (zeros before its first step, as SGD starts)."""
    buf = optimizer.state.get(param, {}).get("momentum_buffer")
    return buf if buf is not None else torch.zeros_like(param)
