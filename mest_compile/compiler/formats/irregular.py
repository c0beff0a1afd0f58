"""Packed format of unstructured sparsity (`irregular`, and any other mask, e.g. `filter_balance`).

The weight `(O, C, kh, kw)` is viewed as a matrix `(O, C*kh*kw)`; every kept weight is one
nonzero. The format lists the nonzeros twice:

* **CSR over output filters** (forward and weight gradient): `row_ptr` and, per nonzero in
  row-major order, `x_off`, the input-scratch offset of its column `(c, kh, kw)` (see
  `geometry.py`). Nonzero `j` of this order is entry `j` of the packed values. Within a filter
  the nonzeros are sorted by input channel, so `seg_ptr[o, b]` (the first nonzero of filter `o`
  in channel block `b` of `channel_block` channels) cuts each row into per-block segments: the
  weight gradient walks one channel block of every filter at a time, so that block's input
  scratch stays in L1.
* **CSC by input-gradient row** `(k, c, a, b)` (chunk of `chunk_filters` filters, input channel,
  dx output phase): `dx_ptr`, and per entry `dx_val` (which nonzero's value) and `dx_off` (its
  gradient-scratch offset: filter `o`'s plane plus the column's shift). The input-gradient
  kernel sums one chunk of filters at a time so that their part of the gradient scratch stays in
  L1; the chunk size belongs to the compiled kernels and is passed in by the caller.

Buffers are sized by a *capacity* (in weights). Kernels read only the first `nnz` entries, so a
new mask that fits is a repack in torch: same buffers, same compiled kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.values import gather_flat, scatter_flat
from mest_compile.errors import MestError

SCHEME = "irregular"


def _kept(mask: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Bool `(O, C*kh*kw)` view of a weight-shaped mask (any bool mask is legal)."""
    g = geometry
    shape = (g.out_channels, g.in_channels, g.kernel_h, g.kernel_w)
    if tuple(mask.shape) != shape:
        raise MestError(f"mask of shape {tuple(mask.shape)} does not match the layer's weight {shape}")
    return mask.detach().to("cpu", torch.bool).reshape(g.out_channels, g.columns)


@dataclass
class IrregularFormat:
    """Kept weights of one layer, as runtime index buffers (int32) for the irregular kernels."""

    geometry: ConvGeometry
    capacity: int
    nnz: int
    row_ptr: torch.Tensor  # (O + 1,)
    x_off: torch.Tensor  # (capacity,)
    flat_idx: torch.Tensor  # (capacity,) int64 into weight.view(-1)
    dx_ptr: torch.Tensor  # (chunks * C * s * s + 1,)
    dx_val: torch.Tensor  # (capacity,)
    dx_off: torch.Tensor  # (capacity,)
    seg_ptr: torch.Tensor  # (O * (blocks + 1),) int32: per filter, channel-block starts
    chunk_filters: int = 0  # filters per input-gradient chunk
    channel_block: int = 0  # input channels per weight-gradient channel block

    @classmethod
    def pack(
        cls,
        mask: torch.Tensor,
        geometry: ConvGeometry,
        capacity: int | None = None,
        chunk_filters: int = 0,
        channel_block: int = 0,
    ) -> IrregularFormat:
        """Pack a weight-shaped bool `mask` for `geometry`.

        Args:
            capacity: buffer size in weights; defaults to the number kept (at least 1).
            chunk_filters: filters per input-gradient chunk, as the kernels expect it
                (`IrregularTiles.dgrad_chunk`); 0 puts all filters in one chunk.
            channel_block: input channels per weight-gradient block, as the kernels expect it
                (`IrregularTiles.wgrad_channels`); 0 puts all channels in one block.
        """
        kept = _kept(mask, geometry)
        nnz = int(kept.sum())
        capacity = max(1, nnz) if capacity is None else int(capacity)
        if nnz > capacity:
            raise MestError(f"mask keeps {nnz} weights, more than the capacity {capacity}")
        o = geometry.out_channels
        chunk_filters = o if chunk_filters <= 0 else min(int(chunk_filters), o)
        chunks = -(-o // chunk_filters)
        c = geometry.in_channels
        channel_block = c if channel_block <= 0 else min(int(channel_block), c)
        blocks = -(-c // channel_block)
        fmt = cls(
            geometry=geometry,
            capacity=capacity,
            nnz=0,
            row_ptr=torch.zeros(o + 1, dtype=torch.int32),
            x_off=torch.zeros(capacity, dtype=torch.int32),
            flat_idx=torch.zeros(capacity, dtype=torch.int64),
            dx_ptr=torch.zeros(chunks * geometry.in_channels * geometry.stride**2 + 1, dtype=torch.int32),
            dx_val=torch.zeros(capacity, dtype=torch.int32),
            dx_off=torch.zeros(capacity, dtype=torch.int32),
            seg_ptr=torch.zeros(o * (blocks + 1), dtype=torch.int32),
            chunk_filters=chunk_filters,
            channel_block=channel_block,
        )
        fmt._fill(kept)
        return fmt

    def fits(self, mask: torch.Tensor) -> bool:
        """Whether `mask` can be repacked into these buffers."""
        return int(_kept(mask, self.geometry).sum()) <= self.capacity

    def repack_(self, mask: torch.Tensor) -> IrregularFormat:
        """Refill the buffers in place for a new mask of the same layer (no new buffers)."""
        kept = _kept(mask, self.geometry)
        if int(kept.sum()) > self.capacity:
            raise MestError(f"mask keeps {int(kept.sum())} weights, more than the capacity {self.capacity}")
        self._fill(kept)
        return self

    def _fill(self, kept: torch.Tensor) -> None:
        geo = self.geometry
        o, col = kept.nonzero(as_tuple=True)  # row-major: sorted by filter, then column
        nnz = int(o.numel())
        self.nnz = nnz
        self.row_ptr[0] = 0
        torch.cumsum(kept.sum(1), 0, out=self.row_ptr[1:])
        # Stale entries past nnz stay valid offsets (zero), so a kernel that over-reads is safe.
        self.x_off.zero_()
        self.x_off[:nnz] = geo.x_offsets[col]
        self.flat_idx.zero_()
        self.flat_idx[:nnz] = o * geo.columns + col
        # Segment starts: nonzeros of filter o before channel block b, plus the row's start.
        khw = geo.kernel_h * geo.kernel_w
        blocks = self.seg_ptr.numel() // geo.out_channels - 1
        per_block = kept.reshape(geo.out_channels, geo.in_channels, khw).sum(2)
        per_block = torch.nn.functional.pad(per_block, (0, blocks * self.channel_block - geo.in_channels))
        per_block = per_block.reshape(geo.out_channels, blocks, self.channel_block).sum(2)
        starts = torch.cumsum(torch.nn.functional.pad(per_block, (1, 0)), 1) + self.row_ptr[:-1, None]
        self.seg_ptr.copy_(starts.reshape(-1))
        # Input gradient: nonzeros grouped by dx row (chunk, c, phase); stable, so filters stay
        # in order within a row (the scratch is then read in increasing address order).
        phase, off = geo.dx_phase_and_offsets
        chunk = torch.div(o, self.chunk_filters, rounding_mode="floor")
        dx_row = (chunk * geo.in_channels + col // khw) * geo.stride**2 + phase[col]
        order = torch.argsort(dx_row, stable=True)
        self.dx_ptr.zero_()
        self.dx_ptr[1:] = torch.cumsum(torch.bincount(dx_row, minlength=self.dx_ptr.numel() - 1), 0)
        self.dx_val.zero_()
        self.dx_val[:nnz] = order.to(torch.int32)
        self.dx_off.zero_()
        self.dx_off[:nnz] = (o[order] * geo.dy_plane + off[col[order]]).to(torch.int32)

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """`(nnz,)` kept values of `weight` in CSR order; differentiable (gradient zero off the mask)."""
        return gather_flat(weight, self.flat_idx, self.nnz)

    def dense_grad(self, values_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight gradient `values`' backward builds from `values_grad` (zero off the mask)."""
        return scatter_flat(values_grad, self.flat_idx, weight.numel()).view(weight.shape)

    def signature(self, buckets: int = 8) -> tuple:
        """Structure signature: geometry, capacity and a histogram of nonzeros per filter.

        Two masks with the same signature have the same work per filter to within a bucket; a
        recompile policy compares signatures to decide whether tuned kernels still fit.
        """
        per_filter = (self.row_ptr[1:] - self.row_ptr[:-1]).to(torch.float32)
        top = max(1, self.geometry.columns)
        hist = torch.histc(per_filter, bins=buckets, min=0, max=top).to(torch.int64)
        return (SCHEME, self.geometry, self.capacity, tuple(hist.tolist()))

    def buffers(self) -> dict[str, torch.Tensor]:
        """The index buffers by name (what a kernel call needs besides activations and values)."""
        return {
            "row_ptr": self.row_ptr,
            "seg_ptr": self.seg_ptr,
            "x_off": self.x_off,
            "dx_ptr": self.dx_ptr,
            "dx_val": self.dx_val,
            "dx_off": self.dx_off,
        }

    def nbytes(self) -> int:
        """Bytes of the index buffers plus the packed values (float32)."""
        idx = sum(t.numel() * t.element_size() for t in self.buffers().values())
        return idx + self.capacity * 4


def random_irregular_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A random bool mask; filter 0 and input channel 0 are always empty (empty rows and columns)."""
    mask = torch.rand(weight_shape, generator=generator) < density
    mask[0] = False
    mask[:, 0] = False
    return mask
