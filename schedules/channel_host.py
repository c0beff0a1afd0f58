"""Host (x86 / ARM CPU) schedules and tile choices of the channel-scheme kernels.

The kernels' inner loops (vectorised over output pixels, unrolled over a register tile of
filters or channels and rows) are part of the templates; the schedules place each image's
scratch fill next to its consumer (so it is built right before use and stays in L2) and
parallelise over images (over input channels for the weight gradient, so that every weight has
one owner and no cross-thread reduction is needed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.schedules.host_common import (
    around,
    divisors,
    largest_divisor,
    vectors,
)


@dataclass(frozen=True)
class ChannelTiles:
    """Register-tile sizes of the three kernels (the knobs a tuner would sample)."""

    # Largest filter tile of the forward; kept filters are split into balanced tiles of at most
    # this many (13 -> 4+3+3+3). 4 filters x 4 vectors = 16 accumulators leave registers for
    # the scratch loads and broadcasts and give 16 independent FMA chains.
    fwd_filters: int
    # Output rows per forward tile: about 4 vectors per filter.
    fwd_rows: int
    # Zero the pruned output planes with CLZERO (AMD x86): no read-for-ownership of lines that
    # are only overwritten, which on a 32x32 layer is 7 of the fwd's 24 MiB of DRAM traffic.
    fwd_clzero: bool
    # Input channels per input-gradient tile: each loaded dy vector feeds this many FMAs.
    dgrad_channels: int
    # dx rows (per phase) per input-gradient tile: channels x phases x rows x vectors ~ 16.
    dgrad_rows: int
    # Largest filter tile of the weight gradient: filters x kh_rows x kw x vectors accumulators;
    # per output row `filters * vectors` dy vectors and `kh_rows * kw * vectors` scratch vectors
    # are loaded for `filters * kh_rows * kw * vectors` FMAs.
    wgrad_filters: int
    # Kernel rows per weight-gradient tile (1 or kh). With one vector per row, all kh rows and 2
    # filters (18 accumulators) reuse each dy load 9 times: measured 2-6% faster than 1 row and
    # 3-4 filters on 8- and 16-wide rows; wider rows have no registers for it.
    wgrad_kh_rows: int
    # Parallel input-channel slots of the weight gradient (one per thread).
    wgrad_slots: int
    # Images per register accumulation of the weight gradient: at least ~16 output rows, so
    # the partial-sum update stays a small overhead on small images.
    wgrad_images: int

    @classmethod
    def default(cls, geo: ConvGeometry, threads: int, clzero: bool = False) -> ChannelTiles:
        out_v, dx_v = vectors(geo.out_w), vectors(geo.dx_cols)
        channels = min(4, geo.in_channels)
        taps = geo.kernel_h * geo.kernel_w
        return cls(
            fwd_filters=4,
            fwd_rows=largest_divisor(geo.out_h, max(1, 4 // out_v)),
            fwd_clzero=clzero,
            dgrad_channels=channels,
            dgrad_rows=largest_divisor(geo.dx_rows, max(1, 16 // (channels * geo.stride * dx_v))),
            wgrad_filters=max(1, min(4, (18 // taps) if out_v == 1 else 24 // (geo.kernel_w * out_v))),
            wgrad_kh_rows=geo.kernel_h if out_v == 1 else 1,
            wgrad_slots=max(1, threads),
            wgrad_images=max(1, 16 // geo.out_h),
        )


def has_clzero(target: tvm.target.Target) -> bool:
    """Whether `target` is an x86 CPU with AMD's CLZERO (every Zen; or `+clzero` in mattr)."""
    if target.kind.name != "llvm":
        return False
    mcpu = str(target.attrs.get("mcpu", ""))
    mattr = [str(a) for a in target.attrs.get("mattr", []) or []]
    return mcpu.startswith("znver") or "+clzero" in mattr


def channel_knobs(geo: ConvGeometry, which: str, tiles: ChannelTiles) -> dict[str, list[int]]:
    """Tile values the tuner tries for kernel `which`."""
    return _KNOBS[which](geo, tiles)


def _dgrad_knobs(geo: ConvGeometry, tiles: ChannelTiles) -> dict[str, list[int]]:
    most_rows = max(1, 16 // (tiles.dgrad_channels * geo.stride * vectors(geo.dx_cols)))
    return {"dgrad_channels": sorted({1, 2, tiles.dgrad_channels}), "dgrad_rows": divisors(geo.dx_rows, most_rows)}


_KNOBS: dict[str, Callable[[ConvGeometry, ChannelTiles], dict[str, list[int]]]] = {
    "forward": lambda geo, tiles: {"fwd_filters": [2, 4, 8],
                                   "fwd_rows": divisors(geo.out_h, max(1, 8 // vectors(geo.out_w)))},
    "dgrad": _dgrad_knobs,
    "wgrad": lambda geo, tiles: {"wgrad_filters": sorted({1, 2, tiles.wgrad_filters}),
                                 "wgrad_images": around(tiles.wgrad_images, high=16)},
}
