"""PyTorch ops calling the compiled block kernels: `torch.library` custom ops with autograd.

`mest::block_conv2d(x, values, ...)` is differentiable in `x` and in the packed `values`
(`(nnz, 4)`, gathered from the dense weight by `BlockFormat.values`), so the dense weight gets
its gradient through the gather: exactly zero outside the mask. Tensors go to TVM zero-copy
(DLPack). The ops work in eager mode and under `torch.compile`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mest_compile.compiler.families.block import block_kernels
from mest_compile.compiler.families.op_args import geometry_from, row_major
from mest_compile.compiler.formats.block import BlockFormat
from mest_compile.errors import MestError


def _kernels(g: list[int], target: str):
    """The cached kernels for a geometry list, checked against the format's dgrad chunking."""
    kernels = block_kernels(geometry_from(g), target)
    if kernels.tiles.dgrad_chunk != g[8]:
        raise MestError(
            f"format packed with {g[8]} groups per input-gradient chunk, the kernels expect "
            f"{kernels.tiles.dgrad_chunk}: pack it with `kernels.pack(mask)`"
        )
    return kernels


@torch.library.custom_op("mest::block_conv2d", mutates_args=())
def block_conv2d(
    x: Tensor, values: Tensor, group_ptr: Tensor, x_off: Tensor, dx_ptr: Tensor, dx_blk: Tensor, dx_off: Tensor,
    geometry: list[int], target: str,
) -> Tensor:
    """Forward of the block-sparse conv; `geometry` is `geometry_list(fmt)`."""
    geo = geometry_from(geometry)
    y = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
    _kernels(geometry, target).forward(row_major(x), row_major(values), group_ptr, x_off, y)
    return y


@block_conv2d.register_fake
def _(x, values, group_ptr, x_off, dx_ptr, dx_blk, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)


@torch.library.custom_op("mest::block_conv2d_dgrad", mutates_args=())
def block_conv2d_dgrad(
    dy: Tensor, values: Tensor, dx_ptr: Tensor, dx_blk: Tensor, dx_off: Tensor, geometry: list[int], target: str
) -> Tensor:
    """Input gradient of `block_conv2d`."""
    geo = geometry_from(geometry)
    dx = dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)
    _kernels(geometry, target).dgrad(row_major(dy), row_major(values), dx_ptr, dx_blk, dx_off, dx)
    return dx


@block_conv2d_dgrad.register_fake
def _(dy, values, dx_ptr, dx_blk, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)


@torch.library.custom_op("mest::block_conv2d_wgrad", mutates_args=())
def block_conv2d_wgrad(x: Tensor, dy: Tensor, group_ptr: Tensor, x_off: Tensor, nnz: int, geometry: list[int], target: str) -> Tensor:
    """Gradient of `block_conv2d` in its packed values, `(nnz, 4)`."""
    dv = x.new_empty(nnz, 4)
    _kernels(geometry, target).wgrad(row_major(x), row_major(dy), group_ptr, x_off, dv)
    return dv


@block_conv2d_wgrad.register_fake
def _(x, dy, group_ptr, x_off, nnz, geometry, target):
    return x.new_empty(nnz, 4)


def _setup(ctx, inputs, output) -> None:
    x, values, group_ptr, x_off, dx_ptr, dx_blk, dx_off, geometry, target = inputs
    ctx.save_for_backward(x, values, group_ptr, x_off, dx_ptr, dx_blk, dx_off)
    ctx.geometry, ctx.target = geometry, target


def _backward(ctx, dy):
    x, values, group_ptr, x_off, dx_ptr, dx_blk, dx_off = ctx.saved_tensors
    dx = dv = None
    if ctx.needs_input_grad[0]:
        dx = block_conv2d_dgrad(dy, values, dx_ptr, dx_blk, dx_off, ctx.geometry, ctx.target)
    if ctx.needs_input_grad[1]:
        dv = block_conv2d_wgrad(x, dy, group_ptr, x_off, values.shape[0], ctx.geometry, ctx.target)
    return dx, dv, None, None, None, None, None, None, None


block_conv2d.register_autograd(_backward, setup_context=_setup)


def geometry_list(fmt: BlockFormat) -> list[int]:
    """What the ops take as `geometry`: the layer's `ConvGeometry` fields and the format's chunking."""
    geo = fmt.geometry
    return [geo.in_channels, geo.in_h, geo.in_w, geo.out_channels, geo.kernel_h, geo.kernel_w, geo.stride, geo.padding,
            fmt.chunk_groups]


def block_conv2d_packed(x: Tensor, weight: Tensor, fmt: BlockFormat, target: str = "host") -> Tensor:
    """`conv2d(x, weight * mask)` for the mask packed in `fmt` (no repacking, no bias).

    `fmt` must come from `block_kernels(geometry, target).pack(mask)` (or be repacked from one).
    """
    values = fmt.values(weight)
    return block_conv2d(x, values, fmt.group_ptr, fmt.x_off, fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, geometry_list(fmt), target)
