"""Packed format of the block scheme (`free_block_prune_column_4`).

The weight `(O, C, kh, kw)` is viewed as a matrix `(O, C*kh*kw)`; a block is 4 consecutive rows
(filters `4g .. 4g+3`) at one column `(c, kh, kw)`, kept or pruned as a whole. The format lists
the kept blocks twice:

* by filter group `g` (forward and weight gradient): `group_ptr` (CSR over groups) and, per
  block, `x_off`, its input-scratch offset (see `geometry.py`);
* for the input gradient, in one of two layouts, whichever the compiled kernels read (a
  property of the kernels passed in by the caller, checked when the op runs):
  * gather (`block_dgrad.py`, `scatter_channels == 0`): by dx row `(k, c, a, b)` (chunk of
    `chunk_groups` filter groups, input channel, dx output phase): `dx_ptr`, and per entry
    `dx_blk` (which block's 4 values) and `dx_off` (gradient-scratch offset of its channel
    `4g`). The kernel sums one chunk of filter groups at a time so that their part of the
    gradient scratch stays in L1 (`BlockTiles.dgrad_chunk`);
  * scatter (`block_dgrad_scatter.py`, stride 1, `scatter_channels > 0`): by (chunk of
    `scatter_channels` input channels, filter group), within a group by tap `(kw, kh)` then
    channel: `dx_ptr`, `dx_blk` as above, and `dx_off` the block's offset in the chunk's padded
    dx scratch (`BlockTiles.dgrad_channels`).

Buffers are sized by a *capacity* (in blocks). The kernels read only the first `nnz` entries, so
a new mask that fits is a repack in torch: same buffers, same compiled kernels. The per-block
buffers (`x_off`, `dx_blk`, `dx_off`) are compact (`compact.py`: 16-bit when the layer's
`index_bound` allows, which the kernels are compiled for); the pointers stay int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mest_compile.compiler.formats.compact import index_dtype, store_
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.values import gather_flat, scatter_flat
from mest_compile.errors import MestError

SCHEME = "free_block_prune_column_4"
BLOCK_ROWS = 4


def kept_blocks(mask: torch.Tensor) -> torch.Tensor:
    """Bool `(O/4, C*kh*kw)`: which blocks a legal block mask keeps.

    Raises:
        MestError: if `O` is not a multiple of 4 or a block is partly kept.
    """
    o = mask.shape[0]
    if o % BLOCK_ROWS:
        raise MestError(f"block scheme needs out_channels % {BLOCK_ROWS} == 0, got {o}")
    blocks = mask.reshape(o // BLOCK_ROWS, BLOCK_ROWS, -1).to(torch.bool)
    kept = blocks[:, 0, :]
    if not bool((blocks == kept[:, None, :]).all()):
        raise MestError("mask is not all-or-none over blocks of 4 consecutive filters at one column")
    return kept


def index_bound(geometry: ConvGeometry) -> int:
    """Exclusive bound of every per-block index of a layer: input- and gradient-scratch offsets
    (either input-gradient layout) and value rows."""
    g = geometry
    return max(g.x_size, g.dy_size, g.in_channels * g.dx_pad_plane, g.out_channels // BLOCK_ROWS * g.columns)


def block_index_dtype(geometry: ConvGeometry) -> torch.dtype:
    """The storage dtype of a layer's per-block indices (what its kernels are compiled to read)."""
    return index_dtype(index_bound(geometry))


@dataclass
class BlockFormat:
    """Kept blocks of one layer, as runtime index buffers for the block kernels."""

    geometry: ConvGeometry
    capacity: int
    nnz: int
    group_ptr: torch.Tensor  # (O/4 + 1,)
    x_off: torch.Tensor  # (capacity,)
    flat_idx: torch.Tensor  # (capacity, 4) int64 into weight.view(-1)
    dx_ptr: torch.Tensor  # (chunks * C * s * s + 1,)
    dx_blk: torch.Tensor  # (capacity,)
    dx_off: torch.Tensor  # (capacity,)
    chunk_groups: int = 0  # filter groups per input-gradient chunk (0: all in one chunk)
    scatter_channels: int = 0  # input channels per scatter chunk (0: the gather layout)

    @classmethod
    def pack(
        cls, mask: torch.Tensor, geometry: ConvGeometry, capacity: int | None = None, chunk_groups: int = 0,
        scatter_channels: int = 0,
    ) -> BlockFormat:
        """Pack a legal block `mask` (shaped like the weight) for `geometry`.

        Args:
            capacity: buffer size in blocks; defaults to the number of kept blocks (at least 1).
            chunk_groups: filter groups per input-gradient chunk, as the kernels expect it
                (`BlockKernels.tiles.dgrad_chunk`); 0 puts all groups in one chunk.
            scatter_channels: input channels per chunk of the scatter input gradient (stride 1,
                `tiles.dgrad_channels`); 0 packs the gather layout.
        """
        kept = kept_blocks(mask.detach().cpu())
        nnz = int(kept.sum())
        capacity = max(1, nnz) if capacity is None else int(capacity)
        if nnz > capacity:
            raise MestError(f"mask keeps {nnz} blocks, more than the capacity {capacity}")
        groups = kept.shape[0]
        chunk_groups = groups if chunk_groups <= 0 else min(int(chunk_groups), groups)
        chunks = -(-groups // chunk_groups)
        if scatter_channels > 0:
            if geometry.stride != 1:
                raise MestError(f"the scatter input-gradient layout is for stride 1, got {geometry.stride}")
            dx_rows = -(-geometry.in_channels // scatter_channels) * groups
        else:
            dx_rows = chunks * geometry.in_channels * geometry.stride**2
        index = block_index_dtype(geometry)
        fmt = cls(
            geometry=geometry,
            capacity=capacity,
            nnz=0,
            group_ptr=torch.zeros(groups + 1, dtype=torch.int32),
            x_off=torch.zeros(capacity, dtype=index),
            flat_idx=torch.zeros(capacity, BLOCK_ROWS, dtype=torch.int64),
            dx_ptr=torch.zeros(dx_rows + 1, dtype=torch.int32),
            dx_blk=torch.zeros(capacity, dtype=index),
            dx_off=torch.zeros(capacity, dtype=index),
            chunk_groups=chunk_groups,
            scatter_channels=int(scatter_channels),
        )
        fmt._fill(kept)
        return fmt

    def fits(self, mask: torch.Tensor) -> bool:
        """Whether `mask` can be repacked into these buffers."""
        return int(kept_blocks(mask.detach().cpu()).sum()) <= self.capacity

    def repack_(self, mask: torch.Tensor) -> BlockFormat:
        """Refill the buffers in place for a new mask of the same layer (no new buffers)."""
        kept = kept_blocks(mask.detach().cpu())
        if int(kept.sum()) > self.capacity:
            raise MestError(f"mask keeps {int(kept.sum())} blocks, more than the capacity {self.capacity}")
        self._fill(kept)
        return self

    def _fill(self, kept: torch.Tensor) -> None:
        geo = self.geometry
        g, col = kept.nonzero(as_tuple=True)  # row-major: sorted by group, then column
        nnz = int(g.numel())
        self.nnz = nnz
        self.group_ptr[0] = 0
        torch.cumsum(kept.sum(1), 0, out=self.group_ptr[1:])
        store_(self.x_off, geo.x_offsets[col])
        rows = g[:, None] * BLOCK_ROWS + torch.arange(BLOCK_ROWS)
        self.flat_idx.zero_()
        self.flat_idx[:nnz] = rows * geo.columns + col[:, None]
        if self.scatter_channels > 0:
            self._fill_scatter(g, col)
            return
        # Input gradient: entries grouped by dx row (c, phase), stable so groups stay ordered.
        phase, off = geo.dx_phase_and_offsets
        khw = geo.kernel_h * geo.kernel_w
        chunk = torch.div(g, self.chunk_groups, rounding_mode="floor")
        dx_row = (chunk * geo.in_channels + col // khw) * geo.stride**2 + phase[col]
        order = torch.argsort(dx_row, stable=True)
        self.dx_ptr.zero_()
        self.dx_ptr[1:] = torch.cumsum(torch.bincount(dx_row, minlength=self.dx_ptr.numel() - 1), 0)
        store_(self.dx_blk, order)
        store_(self.dx_off, g[order] * BLOCK_ROWS * geo.dy_plane + off[col[order]])

    def _fill_scatter(self, g: torch.Tensor, col: torch.Tensor) -> None:
        """The scatter input-gradient layout (see the module docstring) of kept blocks `(g, col)`."""
        geo = self.geometry
        kh_n, kw_n = geo.kernel_h, geo.kernel_w
        c, kh, kw = col // (kh_n * kw_n), col % (kh_n * kw_n) // kw_n, col % kw_n
        chunk = torch.div(c, self.scatter_channels, rounding_mode="floor")
        bucket = chunk * (geo.out_channels // BLOCK_ROWS) + g
        # Within a bucket by tap, then channel: neighbouring entries write other channels' rows.
        key = (bucket * (kh_n * kw_n) + kw * kh_n + kh) * geo.in_channels + c
        order = torch.argsort(key)
        self.dx_ptr.zero_()
        self.dx_ptr[1:] = torch.cumsum(torch.bincount(bucket, minlength=self.dx_ptr.numel() - 1), 0)
        off = (c % self.scatter_channels) * geo.dx_pad_plane + kh * geo.dx_pad_pitch + kw
        store_(self.dx_blk, order)
        store_(self.dx_off, off[order])

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """`(nnz, 4)` kept values of `weight`; differentiable (its gradient is zero off the mask)."""
        return gather_flat(weight, self.flat_idx, self.nnz)

    def dense_grad(self, values_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight gradient `values`' backward builds from `values_grad` (zero off the mask)."""
        return scatter_flat(values_grad, self.flat_idx, weight.numel()).view(weight.shape)

    def signature(self, buckets: int = 8) -> tuple:
        """Structure signature: geometry, capacity and a histogram of blocks per filter group.

        Two masks with the same signature have the same work per group to within a bucket; a
        recompile policy compares signatures to decide whether tuned kernels still fit.
        """
        per_group = (self.group_ptr[1:] - self.group_ptr[:-1]).to(torch.float32)
        top = max(1, self.geometry.columns)
        hist = torch.histc(per_group, bins=buckets, min=0, max=top).to(torch.int64)
        return (SCHEME, self.geometry, self.capacity, tuple(hist.tolist()))

    def buffers(self) -> dict[str, torch.Tensor]:
        """The index buffers by name (what a kernel call needs besides activations and values)."""
        return {
            "group_ptr": self.group_ptr,
            "x_off": self.x_off,
            "dx_ptr": self.dx_ptr,
            "dx_blk": self.dx_blk,
            "dx_off": self.dx_off,
        }

    def nbytes(self) -> int:
        """Bytes of the index buffers plus the packed values (float32)."""
        idx = sum(t.numel() * t.element_size() for t in self.buffers().values())
        return idx + self.capacity * BLOCK_ROWS * 4


def random_block_mask(out_channels: int, columns_shape: tuple[int, ...], density: float,
                      generator: torch.Generator) -> torch.Tensor:
    """A legal block mask `(O, C, kh, kw)`; the first filter group is always empty."""
    groups = out_channels // BLOCK_ROWS
    cols = int(torch.tensor(columns_shape).prod())
    kept = torch.rand(groups, cols, generator=generator) < density
    kept[0] = False
    return kept[:, None, :].expand(groups, BLOCK_ROWS, cols).reshape(out_channels, *columns_shape)
