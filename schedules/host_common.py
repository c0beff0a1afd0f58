"""Pieces every scheme's host schedule shares: vector width arithmetic and the fill placement."""

from __future__ import annotations

# One AVX-512 register holds 16 floats; rows narrower than that still take one register (on
# Zen 4 a 256-bit FMA has the same FLOP rate per cycle as a 512-bit one, which it double-pumps).
LANES = 16


def vectors(width: int) -> int:
    """Vector registers a row of `width` floats takes."""
    return -(-width // LANES)


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def divisors(n: int, limit: int) -> list[int]:
    """The divisors of `n` that are at most `limit` (at least [1])."""
    return [d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0]


def around(value: int, low: int = 1, high: int | None = None) -> list[int]:
    """`value` halved, kept and doubled, within [low, high]: a tuner's neighbourhood of a size knob."""
    top = high if high is not None else 2 * value
    return sorted({min(max(v, low), top) for v in (value // 2, value, 2 * value)})
