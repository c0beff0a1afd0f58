"""Balanced filter tiles: split a runtime number of kept filters into register tiles.

The channel kernels keep a register tile of `f` filters (times output pixels); the kept count
`nnz` is a runtime size and small and odd in practice (3, 6, 13 at 90% on MEST's ResNet-32), so
fixed tiles of the largest size waste most of a tile or leave a 1-filter tail. Instead `nnz` is
cut into `ceil(nnz / F)` tiles whose sizes differ by at most one (13 -> 4+3+3+3, 6 -> 3+3,
3 -> 3): `big` tiles of `q + 1` filters first, then tiles of `q`. Each size `1..F` has its own
statically unrolled micro-kernel; at run time only the one or two matching sizes execute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm.script import tirx as T

# TVMScript macros are hygienic and cannot take *args, so the tile loop forwards a fixed set of
# kernel-specific arguments (buffers b0..b4, indices i0, i1) to the micro-kernel `body(..., j0)`.
MicroKernel = Any


def _step(f: int, body: MicroKernel, rest: MicroKernel | None) -> MicroKernel:
    has_rest = rest is not None

    @T.macro
    def step(b0, b1, b2, b3, b4, i0, i1, nt, q, big):
        for u in range(T.if_then_else(q + 1 == f, big, 0) + T.if_then_else(q == f, nt - big, 0)):
            body(b0, b1, b2, b3, b4, i0, i1, T.if_then_else(q + 1 == f, 0, big * (q + 1)) + u * f)
        if has_rest:
            rest(b0, b1, b2, b3, b4, i0, i1, nt, q, big)

    return step


def filter_tiles(max_tile: int, make_body: Callable[[int], MicroKernel]) -> MicroKernel:
    """A macro `tiles(b0, b1, b2, b3, b4, i0, i1, nnz)` running `make_body(f)` over balanced tiles.

    `make_body(f)` returns a macro `body(b0, b1, b2, b3, b4, i0, i1, j0)` for the `f` filters
    `j0 .. j0 + f - 1`.
    """
    chain = None
    for f in range(1, max_tile + 1):
        chain = _step(f, make_body(f), chain)

    @T.macro
    def tiles(b0, b1, b2, b3, b4, i0, i1, nnz):
        chain(
            b0, b1, b2, b3, b4, i0, i1,
            (nnz + max_tile - 1) // max_tile,
            nnz // T.max((nnz + max_tile - 1) // max_tile, 1),
            nnz - nnz // T.max((nnz + max_tile - 1) // max_tile, 1) * ((nnz + max_tile - 1) // max_tile),
        )

    return tiles
