"""PyTorch ops calling the compiled irregular kernels: `torch.library` custom ops with autograd.

`mest::irregular_conv2d(x, values, ...)` is differentiable in `x` and in the packed `values`
(`(nnz,)`, gathered from the dense weight by `IrregularFormat.values`), so the dense weight gets
its gradient through the gather: exactly zero outside the mask, and only kept weights are ever
computed. Tensors go to TVM zero-copy (DLPack). The ops work in eager mode and under
`torch.compile`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mest_compile.compiler.families.irregular import IrregularKernels, irregular_kernels
from mest_compile.compiler.families.op_args import geometry_from, row_major
from mest_compile.compiler.formats.irregular import IrregularFormat
from mest_compile.errors import MestError


def _kernels(g: list[int], target: str) -> IrregularKernels:
    """The cached kernels for a geometry list, checked against the format's dgrad chunking."""
    kernels = irregular_kernels(geometry_from(g), target)
    if (kernels.tiles.dgrad_chunk, kernels.tiles.wgrad_channels) != tuple(g[8:10]):
        raise MestError(
            f"format packed with {g[8]} filters per input-gradient chunk and {g[9]} channels per "
            f"weight-gradient block, the kernels expect {kernels.tiles.dgrad_chunk} and "
            f"{kernels.tiles.wgrad_channels}: pack it with `kernels.pack(mask)`"
        )
    return kernels


@torch.library.custom_op("mest::irregular_conv2d", mutates_args=())
def irregular_conv2d(
    x: Tensor, values: Tensor, row_ptr: Tensor, seg_ptr: Tensor, x_off: Tensor, dx_ptr: Tensor, dx_val: Tensor,
    dx_off: Tensor, geometry: list[int], target: str,
) -> Tensor:
    """Forward of the unstructured sparse conv; `geometry` is `geometry_list(fmt)`."""
    geo = geometry_from(geometry)
    y = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
    _kernels(geometry, target).forward(row_major(x), row_major(values), row_ptr, x_off, y)
    return y


@irregular_conv2d.register_fake
def _(x, values, row_ptr, seg_ptr, x_off, dx_ptr, dx_val, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)


@torch.library.custom_op("mest::irregular_conv2d_dgrad", mutates_args=())
def irregular_conv2d_dgrad(
    dy: Tensor, values: Tensor, dx_ptr: Tensor, dx_val: Tensor, dx_off: Tensor, geometry: list[int], target: str
) -> Tensor:
    """Input gradient of `irregular_conv2d`."""
    geo = geometry_from(geometry)
    dx = dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)
    _kernels(geometry, target).dgrad(row_major(dy), row_major(values), dx_ptr, dx_val, dx_off, dx)
    return dx


@irregular_conv2d_dgrad.register_fake
def _(dy, values, dx_ptr, dx_val, dx_off, geometry, target):
    geo = geometry_from(geometry)
    return dy.new_empty(dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)


@torch.library.custom_op("mest::irregular_conv2d_wgrad", mutates_args=())
def irregular_conv2d_wgrad(
    x: Tensor, dy: Tensor, seg_ptr: Tensor, x_off: Tensor, nnz: int, geometry: list[int], target: str
) -> Tensor:
    """Gradient of `irregular_conv2d` in its packed values, `(nnz,)`: one dot product per kept weight."""
    dv = x.new_empty(nnz)
    _kernels(geometry, target).wgrad(row_major(x), row_major(dy), seg_ptr, x_off, dv)
    return dv


@irregular_conv2d_wgrad.register_fake
def _(x, dy, seg_ptr, x_off, nnz, geometry, target):
    return x.new_empty(nnz)


def _setup(ctx, inputs, output) -> None:
    x, values, row_ptr, seg_ptr, x_off, dx_ptr, dx_val, dx_off, geometry, target = inputs
    ctx.save_for_backward(x, values, seg_ptr, x_off, dx_ptr, dx_val, dx_off)
    ctx.geometry, ctx.target = geometry, target


def _backward(ctx, dy):
    x, values, seg_ptr, x_off, dx_ptr, dx_val, dx_off = ctx.saved_tensors
    dx = dv = None
    if ctx.needs_input_grad[0]:
        dx = irregular_conv2d_dgrad(dy, values, dx_ptr, dx_val, dx_off, ctx.geometry, ctx.target)
    if ctx.needs_input_grad[1]:
        dv = irregular_conv2d_wgrad(x, dy, seg_ptr, x_off, values.shape[0], ctx.geometry, ctx.target)
    return dx, dv, None, None, None, None, None, None, None, None


irregular_conv2d.register_autograd(_backward, setup_context=_setup)


def geometry_list(fmt: IrregularFormat) -> list[int]:
    """What the ops take as `geometry`: the layer's `ConvGeometry` fields and the format's blockings."""
    geo = fmt.geometry
    return [geo.in_channels, geo.in_h, geo.in_w, geo.out_channels, geo.kernel_h, geo.kernel_w, geo.stride, geo.padding,
            fmt.chunk_filters, fmt.channel_block]


def irregular_conv2d_packed(x: Tensor, weight: Tensor, fmt: IrregularFormat, target: str = "host") -> Tensor:
    """`conv2d(x, weight * mask)` for the mask packed in `fmt` (no repacking, no bias).

    `fmt` must come from `irregular_kernels(geometry, target).pack(mask)` (or be repacked from one).
    """
    values = fmt.values(weight)
    return irregular_conv2d(
        x, values, fmt.row_ptr, fmt.seg_ptr, fmt.x_off, fmt.dx_ptr, fmt.dx_val, fmt.dx_off, geometry_list(fmt), target
    )
