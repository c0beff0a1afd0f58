"""When a mutated mask needs new buffers (a rebuild) and when a repack in place is enough.

Kernels take the sparse structure as runtime buffers sized by a capacity, so most mutations only
refill those buffers. A rebuild allocates fresh buffers sized for the new mask (and asks the
build cache for the layer's kernels again, which recompiles only when the kernels depend on what
changed, e.g. tuned records keyed by structure). Overflowing the capacity always rebuilds; so do
padding waste or signature drift beyond the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecompilePolicy:
    """Thresholds of the rebuild decision."""

    # Fraction of the capacity left unused after a repack; MEST's Soft Memory Bound keeps the
    # nonzero count within a few percent of the upper bound, so a quarter unused means the layer
    # really got sparser and smaller buffers (and kernels tuned for them) pay.
    max_padding: float = 0.25
    # Distance between the structure signatures (histograms of work per row, normalised to sum
    # to 1; half the L1 distance, 0 = same, 1 = disjoint) since the last rebuild.
    max_drift: float = 0.25
    # Capacity over the units a rebuild sees: growth regrows to the same bound, so a little slack
    # absorbs rounding without reallocating.
    headroom: float = 1.1

    def capacity(self, units: int) -> int:
        """Buffer size for a mask keeping `units`."""
        return max(1, int(units * self.headroom) + 1)

    def decide(self, units: int, capacity: int, signature: tuple, built_signature: tuple) -> str:
        """"reuse" (repack in place) or the reason to rebuild: "overflow", "padding", "drift"."""
        if units > capacity:
            return "overflow"
        if capacity and (capacity - units) / capacity > self.max_padding and capacity > self.capacity(units):
            return "padding"
        if drift(signature, built_signature) > self.max_drift:
            return "drift"
        return "reuse"


def refill(policy: RecompilePolicy, fmt: Any, mask: Any, units: int, built_signature: tuple) -> str:
    """A mutated `mask` into `fmt`: "overflow" (untouched: it does not fit), else repacked in place and
    `policy.decide`'s verdict ("reuse", or the reason the buffers should be rebuilt)."""
    if units > fmt.capacity:
        return "overflow"
    fmt.repack_(mask)
    return policy.decide(units, fmt.capacity, fmt.signature(), built_signature)


def drift(a: tuple, b: tuple) -> float:
    """Half the L1 distance of two signatures' histograms (their last element), in [0, 1]."""
    ha, hb = a[-1], b[-1]
    if not isinstance(ha, tuple) or not isinstance(hb, tuple) or len(ha) != len(hb) or a[:-2] != b[:-2]:
        return 0.0 if a == b else 1.0
    sa, sb = sum(ha) or 1, sum(hb) or 1
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(ha, hb))
