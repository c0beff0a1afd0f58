"""PyTorch ops calling the compiled channel kernels: `torch.library` custom ops with autograd.

`mest::channel_conv2d(x, values, kept, slot, ...)` is differentiable in `x` and in the packed
`values` (`(nnz, C, kh, kw)`, the kept filters gathered by `ChannelFormat.values`), so the dense
weight gets its gradient through the gather: exactly zero for pruned filters. Tensors go to TVM
zero-copy (DLPack). The ops work in eager mode and under `torch.compile`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mest_compile.compiler.families.channel import channel_kernels
from mest_compile.compiler.families.op_args import geometry_from, row_major
from mest_compile.compiler.formats.channel import ChannelFormat


@torch.library.custom_op("mest::channel_conv2d", mutates_args=())
def channel_conv2d(x: Tensor, values: Tensor, kept: Tensor, slot: Tensor, geometry: list[int], target: str) -> Tensor:
    """Forward of the channel-pruned conv; `geometry` is `geometry_list(fmt)`."""
    geo = geometry_from(geometry)
    y = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
    channel_kernels(geo, target).forward(row_major(x), row_major(values), kept, slot, y)
    return y


@channel_conv2d.register_fake
def _(x, values, kept, slot, geometry, target):
    geo = geometry_from(geometry)
    return x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)


@torch.library.custom_op("mest::channel_conv2d_dgrad", mutates_args=())
def channel_conv2d_dgrad(dy: Tensor, values: Tensor, kept: Tensor, geometry: list[int], target: str) -> Tensor:
    """Input gradient of `channel_conv2d` (a reduction over the kept output channels only)."""
    geo = geometry_from(geometry)
    dx = dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)
    channel_kernels(geo, target).dgrad(row_major(dy), row_major(values), kept, dx)
    return dx


@channel_conv2d_dgrad.register_fake
def _(dy, values, kept, geometry, target):
    geo = geometry_from(geometry)
    return dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)


@torch.library.custom_op("mest::channel_conv2d_wgrad", mutates_args=())
def channel_conv2d_wgrad(x: Tensor, dy: Tensor, kept: Tensor, nnz: int, geometry: list[int], target: str) -> Tensor:
    """Gradient of `channel_conv2d` in its packed values, `(nnz, C, kh, kw)`."""
    geo = geometry_from(geometry)
    dv = x.new_empty(nnz, geo.in_channels, geo.kernel_h, geo.kernel_w)
    channel_kernels(geo, target).wgrad(row_major(x), row_major(dy), kept, dv)
    return dv


@channel_conv2d_wgrad.register_fake
def _(x, dy, kept, nnz, geometry, target):
    geo = geometry_from(geometry)
    return x.new_empty(nnz, geo.in_channels, geo.kernel_h, geo.kernel_w)


def _setup(ctx, inputs, output) -> None:
    x, values, kept, slot, geometry, target = inputs
    ctx.save_for_backward(x, values, kept)
    ctx.geometry, ctx.target = geometry, target


def _backward(ctx, dy):
    x, values, kept = ctx.saved_tensors
    dx = dv = None
    if ctx.needs_input_grad[0]:
        dx = channel_conv2d_dgrad(dy, values, kept, ctx.geometry, ctx.target)
    if ctx.needs_input_grad[1]:
        dv = channel_conv2d_wgrad(x, dy, kept, values.shape[0], ctx.geometry, ctx.target)
    return dx, dv, None, None, None, None


channel_conv2d.register_autograd(_backward, setup_context=_setup)


def geometry_list(fmt: ChannelFormat) -> list[int]:
    """What the ops take as `geometry`: the layer's `ConvGeometry` fields."""
    geo = fmt.geometry
    return [geo.in_channels, geo.in_h, geo.in_w, geo.out_channels, geo.kernel_h, geo.kernel_w, geo.stride, geo.padding]


def channel_conv2d_packed(x: Tensor, weight: Tensor, fmt: ChannelFormat, target: str = "host") -> Tensor:
    """`conv2d(x, weight * mask)` for the mask packed in `fmt` (no repacking, no bias).

    `fmt` must come from `channel_kernels(geometry, target).pack(mask)` (or be repacked from one).
    """
    return channel_conv2d(x, fmt.values(weight), fmt.kept, fmt.slot, geometry_list(fmt), target)
