"""Packed format of the channel scheme: whole output filters kept or pruned.

A channel mask keeps all of `weight[o]` or none of it, so the kept part of the layer is a dense
conv over the kept filters. The format lists them once:

* `kept (capacity,) int32`: the kept filter indices, ascending; entry `j < nnz` is the output
  channel that packed filter `j` writes (forward), whose `dy` plane the input gradient reads
  and whose weight gradient row `j` is (weight gradient);
* `slot (O,) int32`: the inverse map, `j` for a kept filter and -1 for a pruned one (the
  forward writes zeros into pruned channels).

The values are `weight[kept[:nnz]]`, `(nnz, C, kh, kw)`, gathered by `values` (differentiable).
Buffers are sized by a capacity in filters; the kernels read only the first `nnz` entries, so a
new mask that fits is a repack in torch: same buffers, same compiled kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.values import on_device
from mest_compile.errors import MestError

SCHEME = "channel"


def kept_filters(mask: torch.Tensor) -> torch.Tensor:
    """Bool `(O,)`: which filters a legal channel mask keeps.

    Raises:
        MestError: if some filter is partly kept.
    """
    rows = mask.reshape(mask.shape[0], -1).to(torch.bool)
    kept = rows.any(dim=1)
    if not bool((rows.all(dim=1) == kept).all()):
        raise MestError("mask is not all-or-none over whole filters (channel scheme)")
    return kept


@dataclass
class ChannelFormat:
    """Kept filters of one layer, as runtime index buffers (int32) for the channel kernels."""

    geometry: ConvGeometry
    capacity: int
    nnz: int
    kept: torch.Tensor  # (capacity,) int32
    slot: torch.Tensor  # (O,) int32
    gather: torch.Tensor  # (capacity,) int64: `kept` for torch indexing

    @classmethod
    def pack(cls, mask: torch.Tensor, geometry: ConvGeometry, capacity: int | None = None) -> ChannelFormat:
        """Pack a legal channel `mask` (shaped like the weight) for `geometry`.

        Args:
            capacity: buffer size in filters; defaults to the number of kept filters (at least 1).
        """
        if mask.shape[0] != geometry.out_channels:
            raise MestError(f"mask has {mask.shape[0]} filters, the layer {geometry.out_channels}")
        kept = kept_filters(mask.detach().cpu())
        nnz = int(kept.sum())
        capacity = max(1, nnz) if capacity is None else int(capacity)
        if nnz > capacity:
            raise MestError(f"mask keeps {nnz} filters, more than the capacity {capacity}")
        fmt = cls(
            geometry=geometry,
            capacity=capacity,
            nnz=0,
            kept=torch.zeros(capacity, dtype=torch.int32),
            slot=torch.zeros(geometry.out_channels, dtype=torch.int32),
            gather=torch.zeros(capacity, dtype=torch.int64),
        )
        fmt._fill(kept)
        return fmt

    def fits(self, mask: torch.Tensor) -> bool:
        """Whether `mask` can be repacked into these buffers."""
        return mask.shape[0] == self.geometry.out_channels and int(kept_filters(mask.detach().cpu()).sum()) <= self.capacity

    def repack_(self, mask: torch.Tensor) -> ChannelFormat:
        """Refill the buffers in place for a new mask of the same layer (no new buffers)."""
        kept = kept_filters(mask.detach().cpu())
        if int(kept.sum()) > self.capacity:
            raise MestError(f"mask keeps {int(kept.sum())} filters, more than the capacity {self.capacity}")
        self._fill(kept)
        return self

    def _fill(self, kept: torch.Tensor) -> None:
        idx = kept.nonzero().reshape(-1)
        nnz = int(idx.numel())
        self.nnz = nnz
        # Unused entries point at filter 0: always a valid plane, never read by the kernels.
        self.gather.zero_()
        self.gather[:nnz] = idx
        self.kept.copy_(self.gather)
        self.slot.fill_(-1)
        self.slot[idx] = torch.arange(nnz, dtype=torch.int32)

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """`(nnz, C, kh, kw)` kept filters of `weight`; differentiable (zero gradient off the mask)."""
        return weight.index_select(0, on_device(self.gather, weight.device)[: self.nnz])

    def dense_grad(self, values_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight gradient `values`' backward builds from `values_grad` (zero off the mask)."""
        return torch.zeros_like(weight).index_copy_(0, on_device(self.gather, weight.device)[: self.nnz], values_grad)

    def signature(self) -> tuple:
        """Structure signature: geometry, capacity and (kept, pruned) filter counts.

        The kernels' work is proportional to the kept count and nothing else, so that is the
        whole structure; the recompile policy compares the normalised counts.
        """
        return (SCHEME, self.geometry, self.capacity, (self.nnz, self.geometry.out_channels - self.nnz))

    def buffers(self) -> dict[str, torch.Tensor]:
        """The index buffers the kernels read, by name."""
        return {"kept": self.kept, "slot": self.slot}

    def nbytes(self) -> int:
        """Bytes of the index buffers plus the packed values (float32)."""
        geo = self.geometry
        idx = sum(t.numel() * t.element_size() for t in self.buffers().values())
        return idx + self.capacity * geo.columns * 4


def random_channel_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A legal channel mask shaped like the weight: filter 0 always pruned, the last one kept."""
    o = weight_shape[0]
    kept = torch.rand(o, generator=generator) < density
    kept[-1] = True
    kept[0] = False
    return kept.reshape(-1, *([1] * (len(weight_shape) - 1))).expand(weight_shape).clone()
