"""Host (x86 / ARM CPU) schedules and tile choices of the pattern-scheme kernels.

As for the block scheme, the inner loops (pattern-specialised, vectorised over output pixels,
unrolled over tile rows) are part of the templates, with vectorisation inside the data-dependent
loops (TVM_NOTES §3.5). The schedules place each fill stage under its consumer's image loop, so
an image's scratch is built right before use and stays in L2, and parallelise over images
(slots for the weight gradient).
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
class PatternTiles:
    """Register-tile sizes of the three kernels (the knobs a tuner would sample)."""

    # rows x OW accumulators per filter: 8 vectors give 8 independent FMA chains, and more rows
    # let the taps of a kernel column share more scratch-row loads (a kernel of R rows loads
    # about 2(R+1) rows for 4R FMAs), while leaving registers for loads and broadcasts. Measured
    # exception: stride 2 with 16-wide output rows (MEST's layer2.0.conv1), where 2 rows ran 17%
    # faster than 8, 4 or 1 (4 runs); 8-wide stride-2 rows preferred 8 rows.
    fwd_rows: int
    # rows x dx-phase width accumulators per phase: same trade-off as the forward, except that
    # fewer rows pay when they let the tile's dy rows of all filters fit in L1 (see `dgrad_rows`).
    dgrad_rows: int
    # Kernels of one (channel, pattern) per weight-gradient micro-kernel (a power of two): per
    # output row 4 input vectors and `cols` dy vectors feed 4*cols FMAs into cols x 4 x OW
    # accumulators. Runs average 2-4 kernels at 90% sparsity, so 2 measured best (4 and 8 no
    # faster: more of each run falls to the narrower remainder loops).
    wgrad_cols: int
    # Output rows unrolled per weight-gradient step (vertical taps share scratch rows).
    wgrad_rows: int
    # Parallel image slots of the weight gradient (one per thread).
    wgrad_slots: int
    # Images per register accumulation of the weight gradient. Measured on MEST's ResNet-32: 4
    # images (32 rows) on 8x8 outputs, 12-15% faster than 2; 1 image on 16x16 and larger.
    wgrad_images: int
    # Column phases of the input scratch rounded up to whole vectors (see `InputLayout`; off:
    # measured no faster here).
    aligned_input: bool

    @classmethod
    def default(cls, geo: ConvGeometry, threads: int) -> PatternTiles:
        fwd_most = 2 if geo.stride > 1 and geo.out_w > 8 else max(1, 8 // vectors(geo.out_w))
        return cls(
            fwd_rows=largest_divisor(geo.out_h, fwd_most),
            dgrad_rows=dgrad_rows(geo),
            wgrad_cols=2,
            wgrad_rows=largest_divisor(geo.out_h, 2),
            wgrad_slots=max(1, threads),
            wgrad_images=max(1, 32 // geo.out_h) if geo.out_h <= 8 else 1,
            aligned_input=False,
        )


# Bytes of dy-scratch rows the input gradient's row tile may touch over all filters (most of a
# 32 KiB L1d). Measured on layer1 of MEST's ResNet-32 (32 filters, 32-wide rows): 2-row tiles
# (17 KiB) 11% faster than 4-row tiles (26 KiB); where no tile of at least 2 rows fits (64-128
# filters), and on both stride-2 layers, the largest register tile measured fastest.
DGRAD_TILE_BYTES = 24 * 1024


def dgrad_rows(geo: ConvGeometry) -> int:
    """dx rows per input-gradient register tile (stride 1: the largest that fits L1, if any)."""
    most = max(1, 8 // vectors(geo.dx_cols))
    if geo.stride > 1:
        return largest_divisor(geo.dx_rows, most)
    fits = [
        r for r in range(2, most + 1)
        if geo.dx_rows % r == 0
        and geo.out_channels * geo.dy_copies * (r + geo.dy_rows - geo.dx_rows) * geo.dy_pitch * 4 <= DGRAD_TILE_BYTES
    ]
    return max(fits) if fits else largest_divisor(geo.dx_rows, most)


def pattern_knobs(geo: ConvGeometry, which: str, tiles: PatternTiles) -> dict[str, list[int]]:
    """Tile values the tuner tries for kernel `which` (register tiles up to ~32 accumulators)."""
    return _KNOBS[which](geo, tiles)


_KNOBS: dict[str, Callable[[ConvGeometry, PatternTiles], dict[str, list[int]]]] = {
    "forward": lambda geo, tiles: {"fwd_rows": divisors(geo.out_h, max(1, 8 // vectors(geo.out_w)))},
    "dgrad": lambda geo, tiles: {"dgrad_rows": divisors(geo.dx_rows, max(1, 8 // vectors(geo.dx_cols)))},
    "wgrad": lambda geo, tiles: {"wgrad_cols": sorted({1, 2, 4, tiles.wgrad_cols}),
                                 "wgrad_rows": divisors(geo.out_h, 4),
                                 "wgrad_images": around(tiles.wgrad_images, high=16)},
}
