"""A weight-gradient mask packed as the weight-gradient kernel's own structure.

An algorithm may need a layer's weight gradient on a subset G of its mask M only (SparCL's
dynamic gradient masking sets `SparseConv2d.weight_grad_mask`). The kernels compute gradients of
whole capacity units (a block, a 3x3 kernel, a filter, a weight), so G is widened to the units of
M it touches (its *cover*, G itself for irregular masks), packed by the layer's kernels like any
mask, and the weight-gradient kernel runs on that format: only the cover's gradients are
computed. `slots` places them among M's packed values, whose other gradients are zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.values import on_device
from mest_compile.errors import MestError
from mest_compile.sparsity.module import SparseConv2d


@dataclass
class GradSubset:
    """The packed cover of a gradient mask, for one packing of the layer's mask."""

    fmt: PackedFormat
    #: Int64, shaped like `fmt`'s values: each value's flat position among the layer format's values.
    slots: torch.Tensor

    @property
    def units(self) -> int:
        """Capacity units whose weight gradient the kernel computes."""
        return self.fmt.nnz


def place(part: torch.Tensor, slots: torch.Tensor, values_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The gradient of the layer's packed values (`values_shape`) from a narrowed kernel's `part`
    (shaped like a `GradSubset`'s `slots`): zero on the units the subset leaves out."""
    dv = part.new_zeros(values_shape)
    if part.numel():
        dv.view(-1).index_copy_(0, on_device(slots, dv.device).view(-1), part.reshape(-1))
    return dv


@dataclass
class NarrowedGradients:
    """A backend's counts of gradient masks packed, and of calls whose weight gradient ran on one."""

    grad_packs: int = 0
    narrowed_calls: int = 0


def cover(family: KernelFamily, grad_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The units of `mask` that hold an entry of `grad_mask` (bool, weight-shaped): the smallest
    mask legal for `family`'s kernels with every gradient `grad_mask` asks for inside `mask`."""
    mask = mask.detach().to("cpu", torch.bool)
    if tuple(grad_mask.shape) != tuple(mask.shape):
        raise MestError(f"weight_grad_mask of shape {tuple(grad_mask.shape)} does not match the "
                        f"layer's weight {tuple(mask.shape)}")
    ids = family.unit_ids(tuple(mask.shape))
    touched = torch.zeros(int(ids.max()) + 1, dtype=torch.bool)
    touched[ids[mask & grad_mask.detach().to("cpu", torch.bool)]] = True
    return mask & touched[ids]


def _positions(fmt: PackedFormat, weight_shape: tuple[int, ...]) -> torch.Tensor:
    """Each packed value's flat weight index, shaped like `fmt.values` (any format: it gathers indices)."""
    return fmt.values(torch.arange(torch.Size(weight_shape).numel()).view(weight_shape))


#: Narrow the kernel only when the cover leaves out at least this share of the mask's units: the
#: placement (a zero fill and a copy of the subset's gradient) costs about what the kernel saves on
#: fewer (measured with benchmarks/dgm_wgrad.py, docs/ALGORITHMS.md). An elementwise gradient mask
#: keeping 80% of the weights touches nearly every block or filter of a structured mask.
MIN_SAVED = 0.1


def pack_subset(family: KernelFamily, pack: Callable[[torch.Tensor], PackedFormat], fmt: PackedFormat,
                mask: torch.Tensor, grad_mask: torch.Tensor) -> GradSubset | None:
    """`grad_mask`'s cover packed by `pack` (the layer's kernels' packing), or None when it leaves
    out less than `MIN_SAVED` of the mask's units (the whole mask's kernel is then as fast).

    Args:
        fmt: `mask` as packed for the layer's forward and input gradient.
    """
    covered = cover(family, grad_mask, mask)
    if family.units(covered) > (1 - MIN_SAVED) * fmt.nnz:
        return None
    sub = pack(covered)
    shape = tuple(mask.shape)
    layer = _positions(fmt, shape).reshape(-1)
    where = torch.full((torch.Size(shape).numel(),), -1, dtype=torch.int64)
    where[layer] = torch.arange(layer.numel())
    slots = where[_positions(sub, shape)]
    if bool((slots < 0).any()):  # the cover lies inside the mask, so this is a packing bug
        raise MestError("gradient-mask cover holds weights outside the layer's packed mask")
    return GradSubset(sub, slots)


class GradSubsets:
    """One layer's packed gradient mask, packed again only for a new mask tensor (an algorithm sets a
    new one to change it) or a new packing of the layer's mask; used only by training forwards that
    will need a weight gradient."""

    def __init__(self) -> None:
        self._source: tuple[torch.Tensor | None, int] = (None, -1)
        self._subset: GradSubset | None = None

    def get(self, module: SparseConv2d, family: KernelFamily, pack: Callable[[torch.Tensor], PackedFormat],
            fmt: PackedFormat, packing: int, stats: NarrowedGradients) -> GradSubset | None:
        """The packed cover of `module.weight_grad_mask` for `fmt` (packing number `packing`), or None
        for the whole mask's weight gradient."""
        grad_mask = module.weight_grad_mask
        if grad_mask is None or not (torch.is_grad_enabled() and module.weight.requires_grad):
            return None
        if grad_mask is not self._source[0] or packing != self._source[1]:
            self._subset = pack_subset(family, pack, fmt, module.mask, grad_mask)
            self._source = (grad_mask, packing)
            stats.grad_packs += 1
        stats.narrowed_calls += self._subset is not None
        return self._subset
