"""One set of PyTorch ops for every family's compiled kernels, differentiable, eager and compiled.

`mest::packed_conv2d(x, values, forward_buffers, dgrad_buffers, wgrad_buffers, kernels, geometry,
wgrad_slots)` runs the forward kernel of the kernel set registered as `kernels`; its autograd runs
`mest::packed_conv2d_dgrad` and `mest::packed_conv2d_wgrad` (on a packed subset of the units when
`wgrad_slots` is given, `grad_subset.py`). Each kernel takes its index buffers
in its own order (the family's `buffers` table), so the ops take three lists and need no
per-family code. An op schema carries only strings and integer lists, so kernel sets are found
by a handle (`register`): one dict lookup per call, no build cache, no lock. `values` are the
packed kept weights (`fmt.values(weight)`), so the dense weight gets its gradient through that
gather: exactly zero outside the mask. Tensors go to TVM zero-copy (DLPack).

The ops are declared with `torch.library.Library` and their autograd is an `autograd.Function`
registered at the `Autograd` key, not `torch.library.custom_op`: custom_op's Python wrappers (a
dynamo-disable guard, pytree and alias checks, a generated autograd.Function) made a layer's
forward + backward with empty kernels cost 172 us instead of 65 (2-core benchmark machine), ~3 ms
of a ResNet-32 training step. The dispatcher still sees real ops, so `torch.compile(fullgraph=True)`,
fake tensors and `torch.library.opcheck` work as with custom_op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mest_compile.compiler.families import KernelSet, PackedFormat
from mest_compile.compiler.runtime.grad_subset import GradSubset, place
from mest_compile.compiler.runtime.op_args import geometry_from, geometry_list, row_major
from mest_compile.errors import MestError

_LIB = torch.library.Library("mest", "DEF")
_LIB.define(
    "packed_conv2d(Tensor x, Tensor values, Tensor[] forward_buffers, Tensor[] dgrad_buffers, "
    "Tensor[] wgrad_buffers, str kernels, int[] geometry, Tensor? wgrad_slots=None) -> Tensor"
)
_LIB.define("packed_conv2d_dgrad(Tensor dy, Tensor values, Tensor[] buffers, str kernels, int[] geometry) -> Tensor")
_LIB.define("packed_conv2d_wgrad(Tensor x, Tensor dy, Tensor values, Tensor[] buffers, str kernels, int[] geometry, "
            "Tensor? slots=None) -> Tensor")

#: Every compiled kernel set of the process, by handle.
_KERNELS: dict[str, Any] = {}


def register(handle: str, kernels: KernelSet) -> None:
    """Make `kernels` callable from the ops as `handle` (done once, when they are compiled)."""
    _KERNELS[handle] = kernels


def _kernels(handle: str) -> Any:
    try:
        return _KERNELS[handle]
    except KeyError:
        raise MestError(f"no compiled kernels {handle!r} in this process") from None


def _y_shape(x: Tensor, geometry: list[int]) -> tuple[int, ...]:
    geo = geometry_from(geometry)
    return (x.shape[0], geo.out_channels, geo.out_h, geo.out_w)


def _dx_shape(dy: Tensor, geometry: list[int]) -> tuple[int, ...]:
    geo = geometry_from(geometry)
    return (dy.shape[0], geo.in_channels, geo.in_h, geo.in_w)


# ---- kernels (any backend) and fake kernels (shapes only, for torch.compile) -------------------
def _forward(x: Tensor, values: Tensor, forward_buffers: list[Tensor], dgrad_buffers: list[Tensor],
             wgrad_buffers: list[Tensor], kernels: str, geometry: list[int], wgrad_slots: Tensor | None = None) -> Tensor:
    y = x.new_empty(_y_shape(x, geometry))
    _kernels(kernels).forward(row_major(x), row_major(values), *forward_buffers, y)
    return y


def _dgrad(dy: Tensor, values: Tensor, buffers: list[Tensor], kernels: str, geometry: list[int]) -> Tensor:
    dx = dy.new_empty(_dx_shape(dy, geometry))
    _kernels(kernels).dgrad(row_major(dy), row_major(values), *buffers, dx)
    return dx


def _wgrad(x: Tensor, dy: Tensor, values: Tensor, buffers: list[Tensor], kernels: str, geometry: list[int],
           slots: Tensor | None = None) -> Tensor:
    if slots is None:
        dv = torch.empty_like(values, memory_format=torch.contiguous_format)
        _kernels(kernels).wgrad(row_major(x), row_major(dy), *buffers, dv)
        return dv
    # `buffers` pack a subset of the values' units (`grad_subset.py`): the kernel computes theirs,
    # placed by `slots`; the other values get a zero gradient.
    part = values.new_empty(slots.shape)
    if slots.numel():
        _kernels(kernels).wgrad(row_major(x), row_major(dy), *buffers, part)
    return place(part, slots, values.shape)


_LIB.impl("packed_conv2d", _forward, "CompositeExplicitAutograd")
_LIB.impl("packed_conv2d_dgrad", _dgrad, "CompositeExplicitAutograd")
_LIB.impl("packed_conv2d_wgrad", _wgrad, "CompositeExplicitAutograd")


@torch.library.register_fake("mest::packed_conv2d", lib=_LIB)
def _(x: Tensor, values: Tensor, forward_buffers: list[Tensor], dgrad_buffers: list[Tensor],
      wgrad_buffers: list[Tensor], kernels: str, geometry: list[int], wgrad_slots: Tensor | None = None) -> Tensor:
    return x.new_empty(_y_shape(x, geometry))


@torch.library.register_fake("mest::packed_conv2d_dgrad", lib=_LIB)
def _(dy: Tensor, values: Tensor, buffers: list[Tensor], kernels: str, geometry: list[int]) -> Tensor:
    return dy.new_empty(_dx_shape(dy, geometry))


@torch.library.register_fake("mest::packed_conv2d_wgrad", lib=_LIB)
def _(x: Tensor, dy: Tensor, values: Tensor, buffers: list[Tensor], kernels: str, geometry: list[int],
      slots: Tensor | None = None) -> Tensor:
    return torch.empty_like(values, memory_format=torch.contiguous_format)


PACKED_CONV2D = torch.ops.mest.packed_conv2d.default
PACKED_CONV2D_DGRAD = torch.ops.mest.packed_conv2d_dgrad.default
PACKED_CONV2D_WGRAD = torch.ops.mest.packed_conv2d_wgrad.default


# ---- autograd ----------------------------------------------------------------------------------
class _PackedConv2d(torch.autograd.Function):
    """Differentiable in `x` and `values`; the buffers are integer indices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor, forward_buffers: list[Tensor], dgrad_buffers: list[Tensor],
                wgrad_buffers: list[Tensor], kernels: str, geometry: list[int],
                wgrad_slots: Tensor | None = None) -> Tensor:
        ctx.save_for_backward(x, values, *dgrad_buffers, *wgrad_buffers)
        ctx.split, ctx.key, ctx.slots = len(dgrad_buffers), (kernels, geometry), wgrad_slots
        with torch._C._AutoDispatchBelowAutograd():  # the op's own kernels, not this function again
            return PACKED_CONV2D(x, values, forward_buffers, dgrad_buffers, wgrad_buffers, kernels, geometry,
                                 wgrad_slots)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, values, *buffers = ctx.saved_tensors
        dgrad_buffers, wgrad_buffers = buffers[: ctx.split], buffers[ctx.split :]
        dx = PACKED_CONV2D_DGRAD(dy, values, dgrad_buffers, *ctx.key) if ctx.needs_input_grad[0] else None
        dv = PACKED_CONV2D_WGRAD(x, dy, values, wgrad_buffers, *ctx.key, ctx.slots) if ctx.needs_input_grad[1] else None
        return dx, dv, None, None, None, None, None, None


_LIB.impl("packed_conv2d", _PackedConv2d.apply, "Autograd")


def packed_conv2d(x: Tensor, weight: Tensor, fmt: PackedFormat, kernels: KernelSet,
                  grad_subset: GradSubset | None = None) -> Tensor:
    """`conv2d(x, weight * mask)` (no bias) through `kernels`, for the mask packed in `fmt`.

    Differentiable in `x` and `weight`: `weight` reaches the kernels as `fmt.values(weight)`, whose
    gather gives the dense weight its gradient, exactly zero outside the mask. With `grad_subset`
    the weight gradient is computed on its units only (zero on the mask's others).

    Example:
        >>> y = packed_conv2d(x, w, kernels.pack(mask), kernels)  # doctest: +SKIP
    """
    family = kernels.family
    family.check_packing(fmt, kernels.tiles)
    forward, dgrad = (family.phase_buffers(which, fmt) for which in ("forward", "dgrad"))
    if grad_subset is None:
        wgrad, slots = family.phase_buffers("wgrad", fmt), None
    else:
        family.check_packing(grad_subset.fmt, kernels.tiles)
        wgrad, slots = family.phase_buffers("wgrad", grad_subset.fmt), grad_subset.slots
    return PACKED_CONV2D(x, fmt.values(weight), forward, dgrad, wgrad, kernels.handle, geometry_list(kernels.geometry),
                         slots)
