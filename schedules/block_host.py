"""Host (x86 / ARM CPU) schedules and tile choices of the block-scheme kernels.

The kernels' inner loops (vectorised over output pixels, unrolled over the 4 block rows and the
tile rows) are part of the templates: vectorisation sits *inside* the data-dependent loop,
never around it (TVM_NOTES §3.5). The tiles below shape those templates; the loop-level
schedule every scheme shares is in `host_space.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.schedules.host_common import (
    around,
    divisors,
    largest_divisor,
    vectors,
)


@dataclass(frozen=True)
class BlockTiles:
    """Register-tile sizes of the three kernels (the knobs a tuner would sample)."""

    # 4 x rows x OW accumulators; 16 of the 32 vector registers leave room for loads and
    # broadcasts and give 16 independent FMA chains (FMA latency 4 x throughput 1-2).
    fwd_rows: int
    # rows x dx-phase width accumulators per phase; each loaded value is used once, so 8 chains
    # already cover the FMA latency and more only adds register pressure.
    dgrad_rows: int
    # cols x 4 x OW accumulators: 4 dy rows and `cols` scratch rows per 4*cols FMAs.
    wgrad_cols: int
    # Parallel image slots of the weight gradient (one per thread).
    wgrad_slots: int
    # Images per register accumulation of the weight gradient: at least ~16 output rows, so
    # the partial-sum update (cols x 4 vector read-modify-writes) stays a small overhead.
    wgrad_images: int
    # Filter groups per input-gradient chunk: the dy rows a tile reads from one chunk should
    # stay in L1 (that kernel loads once per FMA); fewer groups cost more partial-sum traffic.
    dgrad_chunk: int
    # Stride 1 runs the scatter input gradient instead (`block_dgrad_scatter.py`; 0: the gather
    # kernel above): dy rows per step, whose 4 x rows vectors stay in registers. Measured on
    # MEST's ResNet-32 against the gather kernel (interleaved with dense): 1.50x on 32x32
    # (1 row), 1.55x on 16x16 (2 rows), 1.29-1.33x on 8x8 (4-8 rows).
    dgrad_scatter_rows: int = 0
    # Input channels per scatter chunk: the chunk's padded dx planes (its scratch) stay in L2.
    # One chunk measured fastest on all three (148 KiB on 32x32); halving it 1.1-1.4x slower.
    dgrad_channels: int = 0

    @property
    def scatter_layout(self) -> int:
        """Channels per scatter chunk the format must be packed with (0: the gather layout)."""
        return self.dgrad_channels if self.dgrad_scatter_rows else 0

    @classmethod
    def default(cls, geo: ConvGeometry, threads: int) -> BlockTiles:
        dgrad_rows = largest_divisor(geo.dx_rows, max(1, 8 // vectors(geo.dx_cols)))
        return cls(
            fwd_rows=largest_divisor(geo.out_h, max(1, 4 // vectors(geo.out_w))),
            dgrad_rows=dgrad_rows,
            wgrad_cols=max(1, 4 // vectors(geo.out_w)),
            wgrad_slots=max(1, threads),
            wgrad_images=max(1, 16 // geo.out_h),
            dgrad_chunk=dgrad_chunk_groups(geo, dgrad_rows),
            dgrad_scatter_rows=scatter_rows(geo),
            dgrad_channels=scatter_channels(geo),
        )


# Bytes of dy rows one input-gradient chunk may touch per tile (about one 32 KiB L1d), and the
# fewest filter groups per chunk per dx phase: a chunk re-loads and re-stores the tile's partial
# sums, which only pays when each (chunk, channel) has several blocks to add.
DGRAD_CHUNK_BYTES = 32 * 1024
DGRAD_MIN_GROUPS = 4


def dgrad_chunk_groups(geo: ConvGeometry, rows: int) -> int:
    """Filter groups per input-gradient chunk for `rows`-row tiles (all groups: no chunking)."""
    tile_rows = rows + geo.dy_rows - geo.dx_rows
    per_group = 4 * geo.dy_copies * tile_rows * geo.dy_pitch * 4
    fit = max(DGRAD_CHUNK_BYTES // per_group, DGRAD_MIN_GROUPS * geo.stride**2)
    return max(1, min(geo.out_channels // 4, fit))


# Bytes of padded dx planes one scatter chunk may hold (half of Zen 4's 1 MiB L2).
SCATTER_BYTES = 256 * 1024


def scatter_rows(geo: ConvGeometry) -> int:
    """dy rows per step of the scatter input gradient (0: stride 2, which runs the gather kernel).

    About two vectors of one filter's row per step: 1 row of 32, 2 of 16, 4 of 8.
    """
    return largest_divisor(geo.out_h, max(1, 32 // geo.out_w)) if geo.stride == 1 else 0


def scatter_channels(geo: ConvGeometry) -> int:
    """Input channels per scatter chunk: as many padded dx planes as fit `SCATTER_BYTES` (0: stride 2)."""
    if geo.stride != 1:
        return 0
    return max(1, min(geo.in_channels, SCATTER_BYTES // (geo.dx_pad_plane * 4)))


def block_knobs(geo: ConvGeometry, which: str, tiles: BlockTiles) -> dict[str, list[int]]:
    """Tile values the tuner tries for kernel `which` (register-tile rows up to 32 accumulators)."""
    return _KNOBS[which](geo, tiles)


def _dgrad_knobs(geo: ConvGeometry, tiles: BlockTiles) -> dict[str, list[int]]:
    if tiles.dgrad_scatter_rows:  # the scatter form (stride 1) has its own tiles
        return {"dgrad_scatter_rows": divisors(geo.out_h, 8),
                "dgrad_channels": around(tiles.dgrad_channels, high=geo.in_channels)}
    return {"dgrad_rows": divisors(geo.dx_rows, max(1, 8 // vectors(geo.dx_cols))),
            "dgrad_chunk": around(tiles.dgrad_chunk, high=geo.out_channels // 4)}


_KNOBS: dict[str, Callable[[ConvGeometry, BlockTiles], dict[str, list[int]]]] = {
    "forward": lambda geo, tiles: {"fwd_rows": divisors(geo.out_h, max(1, 8 // vectors(geo.out_w)))},
    "dgrad": _dgrad_knobs,
    "wgrad": lambda geo, tiles: {"wgrad_cols": sorted({1, 2, tiles.wgrad_cols}),
                                 "wgrad_images": around(tiles.wgrad_images, high=16),
                                 "wgrad_slots": [tiles.wgrad_slots, 2 * tiles.wgrad_slots]},
}
