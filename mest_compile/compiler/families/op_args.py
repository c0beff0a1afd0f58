"""Argument handling every family's torch ops share."""

from __future__ import annotations

import torch
from torch import Tensor

from mest_compile.compiler.formats.geometry import ConvGeometry


def geometry_from(values: list[int]) -> ConvGeometry:
    """The `ConvGeometry` whose fields lead an op's `geometry` list (families may append their own)."""
    return ConvGeometry(*values[:8])


def row_major(t: Tensor) -> Tensor:
    """`t` with exactly row-major strides, which TVM checks (torch's `is_contiguous` ignores the
    strides of size-0 and size-1 dimensions, e.g. the expanded gradient of `y.sum()`)."""
    step = 1
    for size, stride in zip(reversed(t.shape), reversed(t.stride())):
        if stride != step:
            return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
        step *= size
    return t
