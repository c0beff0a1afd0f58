"""Host (x86 / ARM CPU) schedules and tile choices of the irregular-scheme kernels.

The kernels' inner loops (vectorised over output pixels, unrolled over tile rows or nonzeros)
are part of the templates: vectorisation sits *inside* the data-dependent loop, never around it
(TVM_NOTES §3.5). The schedules only place the fill stage next to its consumer, so each image's
scratch is built right before use and stays in L2, and parallelise over images (slots for the
weight gradient).
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
class IrregularTiles:
    """Register-tile sizes of the three kernels (the knobs a tuner would sample)."""

    # rows x OW accumulators per filter. Each nonzero costs an index load and a broadcast
    # before its rows x OW vector FMAs, so taller tiles amortise that, but every filter of the
    # tile reads rows + kh - 1 input rows of every channel: measured on the ResNet-32 layers
    # (single thread), 4 rows beat 8 by 8-20% (the tile's scratch then stays near L1 size) and
    # beat 2 by 10%.
    fwd_rows: int
    # rows x dx-phase width accumulators per phase; each loaded value is used once, so 8 chains
    # already cover the FMA latency and more only adds register pressure.
    dgrad_rows: int
    # cols x OW accumulators: one dy row and `cols` scratch rows per `cols` FMAs. Measured
    # (single thread) 4 columns for one-vector rows and 2 for two-vector rows: longer tiles
    # leave more of a filter's short per-channel-block segments to the one-at-a-time tail.
    wgrad_cols: int
    # Parallel image slots of the weight gradient (one per thread).
    wgrad_slots: int
    # Images per register accumulation of the weight gradient: at least ~16 output rows, so
    # the partial-sum update stays a small overhead.
    wgrad_images: int
    # Filters per input-gradient chunk: the dy rows a tile reads from one chunk should stay in
    # L1; fewer filters per chunk cost more partial-sum traffic.
    dgrad_chunk: int
    # Input channels per weight-gradient block: the block's input scratch should stay in L1 while
    # every filter's segment in it runs; smaller blocks re-read dy (from L2) more often and cut
    # the filters' rows into shorter segments (more single-nonzero tails).
    wgrad_channels: int

    @classmethod
    def default(cls, geo: ConvGeometry, threads: int) -> IrregularTiles:
        dgrad_rows = largest_divisor(geo.dx_rows, max(1, 8 // vectors(geo.dx_cols)))
        return cls(
            fwd_rows=largest_divisor(geo.out_h, max(1, min(4, 8 // vectors(geo.out_w)))),
            dgrad_rows=dgrad_rows,
            wgrad_cols=max(1, 4 // vectors(geo.out_w)),
            wgrad_slots=max(1, threads),
            wgrad_images=max(1, 16 // geo.out_h),
            dgrad_chunk=dgrad_chunk_filters(geo, dgrad_rows),
            wgrad_channels=wgrad_channel_block(geo),
        )


# Bytes of dy rows one input-gradient chunk may touch per tile (about one 32 KiB L1d), and the
# fewest filters per chunk per dx phase: a chunk re-loads and re-stores the tile's partial sums,
# which only pays when each (chunk, channel) has several nonzeros to add (at 10% density a
# 3x3 layer has ~0.9 per filter and channel).
DGRAD_CHUNK_BYTES = 32 * 1024
DGRAD_MIN_FILTERS = 16


def dgrad_chunk_filters(geo: ConvGeometry, rows: int) -> int:
    """Filters per input-gradient chunk for `rows`-row tiles (all filters: no chunking)."""
    tile_rows = rows + geo.dy_rows - geo.dx_rows
    per_filter = geo.dy_copies * tile_rows * geo.dy_pitch * 4
    fit = max(DGRAD_CHUNK_BYTES // per_filter, DGRAD_MIN_FILTERS * geo.stride**2)
    return max(1, min(geo.out_channels, fit))


# Bytes of input scratch one weight-gradient channel block may span (half the L1d: dy rows and
# the partial sums share it).
WGRAD_BLOCK_BYTES = 16 * 1024


def wgrad_channel_block(geo: ConvGeometry) -> int:
    """Input channels per weight-gradient block (all channels: one block)."""
    per_channel = geo.stride * geo.x_rows * geo.x_pitch * 4
    return max(1, min(geo.in_channels, WGRAD_BLOCK_BYTES // per_channel))


def irregular_knobs(geo: ConvGeometry, which: str, tiles: IrregularTiles) -> dict[str, list[int]]:
    """Tile values the tuner tries for kernel `which`."""
    return _KNOBS[which](geo, tiles)


_KNOBS: dict[str, Callable[[ConvGeometry, IrregularTiles], dict[str, list[int]]]] = {
    "forward": lambda geo, tiles: {"fwd_rows": divisors(geo.out_h, max(1, 8 // vectors(geo.out_w)))},
    "dgrad": lambda geo, tiles: {"dgrad_rows": divisors(geo.dx_rows, max(1, 8 // vectors(geo.dx_cols))),
                                 "dgrad_chunk": around(tiles.dgrad_chunk, high=geo.out_channels)},
    "wgrad": lambda geo, tiles: {"wgrad_cols": sorted({1, 2, tiles.wgrad_cols}),
                                 "wgrad_images": around(tiles.wgrad_images, high=16),
                                 "wgrad_channels": around(tiles.wgrad_channels, high=geo.in_channels)},
}
