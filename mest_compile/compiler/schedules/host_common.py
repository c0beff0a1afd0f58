"""Pieces every scheme's host schedule shares: vector width arithmetic and the fill placement."""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

# One AVX-512 register holds 16 floats; rows narrower than that still take one register (on
# Zen 4 a 256-bit FMA has the same FLOP rate per cycle as a 512-bit one, which it double-pumps).
LANES = 16


def vectors(width: int) -> int:
    """Vector registers a row of `width` floats takes."""
    return -(-width // LANES)


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def fill_at_image(func: tirx.PrimFunc, consumer: str) -> tvm.IRModule:
    """Build each image's scratch right before `consumer` uses it (it stays in L2); images in parallel."""
    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock(consumer))
    sch.compute_at(sch.get_sblock("fill"), loops[0])
    sch.parallel(loops[0])
    return sch.mod
