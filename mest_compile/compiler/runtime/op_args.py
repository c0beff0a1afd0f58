"""Argument handling every family's torch ops share."""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from mest_compile.compiler.formats.geometry import ConvGeometry


def geometry_list(geo: ConvGeometry) -> list[int]:
    """`geo` as an op argument (`int[]`): its fields in declaration order (spelled out: 1 us faster
    than `dataclasses.fields`, once per layer call)."""
    return [geo.in_channels, geo.in_h, geo.in_w, geo.out_channels, geo.kernel_h, geo.kernel_w, geo.stride, geo.padding]


def geometry_from(values: list[int]) -> ConvGeometry:
    """The `ConvGeometry` an op's `geometry` argument encodes (inverse of `geometry_list`)."""
    return _geometry(*values)


@cache
def _geometry(*values: int) -> ConvGeometry:
    return ConvGeometry(*values)  # cached: its checks cost 1.5 us, five times per layer call


def row_major(t: Tensor) -> Tensor:
    """`t` with exactly row-major strides, which TVM checks (torch's `is_contiguous` ignores the
    strides of size-0 and size-1 dimensions, e.g. the expanded gradient of `y.sum()`)."""
    step = 1
    for size, stride in zip(reversed(t.shape), reversed(t.stride())):
        if stride != step:
            return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
        step *= size
    return t
