"""PyTorch ops calling the compiled pattern kernels: `torch.library` custom ops with autograd.

`mest::pattern_conv2d(x, values, ...)` is differentiable in `x` and in the packed `values`
(`(nnz, 4)`, gathered from the dense weight by `PatternFormat.values`), so the dense weight gets
its gradient through the gather: exactly zero outside the mask. Tensors go to TVM zero-copy
(DLPack). The ops work in eager mode and under `torch.compile`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mest_compile.compiler.families.op_args import geometry_from, row_major
from mest_compile.compiler.formats.pattern import TAPS_PER_KERNEL, PatternFormat


def _kernels(g: list[int], target: str):
    from mest_compile.compiler.families.pattern import pattern_kernels

    return pattern_kernels(geometry_from(g), target)


@torch.library.custom_op("mest::pattern_conv2d", mutates_args=())
def pattern_conv2d(
    x: Tensor, values: Tensor, fwd_ptr: Tensor, x_off: Tensor, dx_ptr: Tensor, dx_ker: Tensor, dx_off: Tensor,
    geometry: list[int], target: str,
) -> Tensor:
    """Forward of the pattern-sparse conv; `geometry` is `geometry_list(fmt)`."""
    geo = geometry_from(geometry)
    y = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
    _kernels(geometry, target).forward(row_major(x), row_major(values), fwd_ptr, x_off, y)
    return y


@pattern_conv2d.register_fake
def _(x, values, fwd_ptr, x_off, dx_ptr, dx_ker, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)


@torch.library.custom_op("mest::pattern_conv2d_dgrad", mutates_args=())
def pattern_conv2d_dgrad(
    dy: Tensor, values: Tensor, dx_ptr: Tensor, dx_ker: Tensor, dx_off: Tensor, geometry: list[int], target: str
) -> Tensor:
    """Input gradient of `pattern_conv2d`."""
    geo = geometry_from(geometry)
    dx = dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)
    _kernels(geometry, target).dgrad(row_major(dy), row_major(values), dx_ptr, dx_ker, dx_off, dx)
    return dx


@pattern_conv2d_dgrad.register_fake
def _(dy, values, dx_ptr, dx_ker, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)


@torch.library.custom_op("mest::pattern_conv2d_wgrad", mutates_args=())
def pattern_conv2d_wgrad(
    x: Tensor, dy: Tensor, fwd_ptr: Tensor, x_off: Tensor, nnz: int, geometry: list[int], target: str
) -> Tensor:
    """Gradient of `pattern_conv2d` in its packed values, `(nnz, 4)`."""
    dv = x.new_empty(nnz, TAPS_PER_KERNEL)
    _kernels(geometry, target).wgrad(row_major(x), row_major(dy), fwd_ptr, x_off, dv)
    return dv


@pattern_conv2d_wgrad.register_fake
def _(x, dy, fwd_ptr, x_off, nnz, geometry, target):
    return x.new_empty(nnz, TAPS_PER_KERNEL)


def _setup(ctx, inputs, output) -> None:
    x, values, fwd_ptr, x_off, dx_ptr, dx_ker, dx_off, geometry, target = inputs
    ctx.save_for_backward(x, values, fwd_ptr, x_off, dx_ptr, dx_ker, dx_off)
    ctx.geometry, ctx.target = geometry, target


def _backward(ctx, dy):
    x, values, fwd_ptr, x_off, dx_ptr, dx_ker, dx_off = ctx.saved_tensors
    dx = dv = None
    if ctx.needs_input_grad[0]:
        dx = pattern_conv2d_dgrad(dy, values, dx_ptr, dx_ker, dx_off, ctx.geometry, ctx.target)
    if ctx.needs_input_grad[1]:
        dv = pattern_conv2d_wgrad(x, dy, fwd_ptr, x_off, values.shape[0], ctx.geometry, ctx.target)
    return dx, dv, None, None, None, None, None, None, None


pattern_conv2d.register_autograd(_backward, setup_context=_setup)


def geometry_list(fmt: PatternFormat) -> list[int]:
    """What the ops take as `geometry`: the layer's `ConvGeometry` fields."""
    geo = fmt.geometry
    return [geo.in_channels, geo.in_h, geo.in_w, geo.out_channels, geo.kernel_h, geo.kernel_w, geo.stride, geo.padding]


def pattern_conv2d_packed(x: Tensor, weight: Tensor, fmt: PatternFormat, target: str = "host") -> Tensor:
    """`conv2d(x, weight * mask)` for the mask packed in `fmt` (no repacking, no bias)."""
    values = fmt.values(weight)
    return pattern_conv2d(x, values, fmt.fwd_ptr, fmt.x_off, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, geometry_list(fmt), target)
