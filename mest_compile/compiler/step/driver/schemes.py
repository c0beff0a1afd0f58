"""MEST's Elastic Mutation in numpy: prune to the lower bound by magnitude, grow randomly to the upper.

The same rules as `mest_compile.sparsity.schemes` (whose docstrings give the reference's
details): thresholds at numpy's percentile, growth counts `int(#empty - s * #units)`, uniform
choice among the empty units. The draws come from a numpy generator, so a board run does not
repeat a host run's masks; each mask is legal for its scheme by construction and the packers
(`formats.py`) check it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .formats import PATTERN_TAPS

Rng = np.random.Generator


def _growth_count(n_empty: np.ndarray, sparsity: float, n_units: int) -> np.ndarray:
    raw = np.trunc(n_empty.astype(np.float64) - sparsity * n_units).astype(np.int64)
    return np.minimum(np.maximum(raw, 0), n_empty)


def _choose(candidates: np.ndarray, counts: np.ndarray, rng: Rng) -> np.ndarray:
    """Per row of `candidates` (R, C), `counts[r]` of its True entries, uniformly without replacement."""
    keys = np.where(candidates, rng.random(candidates.shape), 2.0)
    ranks = np.empty_like(keys, dtype=np.int64)
    np.put_along_axis(ranks, np.argsort(keys, axis=1, kind="stable"), np.arange(keys.shape[1])[None, :], axis=1)
    return candidates & (ranks < counts.reshape(-1, 1))


def _kernel_ratio(sparsity: float) -> float:
    return 1 - ((1 - sparsity) * 9 / 4)


# --- prune: score (|w|) -> bool mask of the weight's shape ---------------------------------------
def prune_irregular(score: np.ndarray, sparsity: float) -> np.ndarray:
    return score > np.percentile(score, sparsity * 100)


def prune_block(score: np.ndarray, sparsity: float) -> np.ndarray:
    norms = np.linalg.norm(score.reshape(score.shape[0] // 4, 4, -1), 2, axis=1)
    kept = norms > np.percentile(norms, sparsity * 100)
    return np.repeat(kept[:, None, :], 4, axis=1).reshape(score.shape)


def filters_pruned(n_filters: int, sparsity: float) -> int:
    return min(n_filters, math.floor(sparsity * n_filters + 0.5))


def prune_channel(score: np.ndarray, sparsity: float) -> np.ndarray:
    norms2 = (score.reshape(score.shape[0], -1).astype(np.float64) ** 2).sum(1)
    kept = np.ones(score.shape[0], dtype=bool)
    kept[np.argsort(norms2, kind="stable")[: filters_pruned(score.shape[0], sparsity)]] = False
    return np.broadcast_to(kept.reshape(-1, *([1] * (score.ndim - 1))), score.shape).copy()


def _pattern_masks() -> np.ndarray:
    table = np.zeros((8, 9), dtype=bool)
    np.put_along_axis(table, PATTERN_TAPS, True, axis=1)
    return table.reshape(8, 3, 3)


def prune_pattern_filter_balance(score: np.ndarray, sparsity: float) -> np.ndarray:
    """Each kernel keeps its best pattern; then every filter drops its weakest kernels (balance)."""
    o_n, c_n = score.shape[:2]
    flat = score.reshape(o_n, c_n, 9).astype(np.float32)
    norms = np.sqrt(np.stack([(flat[..., taps] ** 2).sum(-1) for taps in PATTERN_TAPS], -1))
    mask = _pattern_masks()[norms.argmax(-1)]
    drop = min(max(int(c_n * _kernel_ratio(sparsity)), 0), c_n)
    kernel_norms = np.linalg.norm((score * mask).reshape(o_n, c_n, 9), 2, axis=2)
    kept = np.ones((o_n, c_n), dtype=bool)
    if drop == c_n:
        kept[:] = False
    elif drop > 0:
        np.put_along_axis(kept, np.argpartition(kernel_norms, drop, axis=1)[:, :drop], False, axis=1)
    return mask & kept[:, :, None, None]


# --- grow: (pruned mask, sparsity, rng) -> a superset of the mask --------------------------------
def grow_irregular(mask: np.ndarray, sparsity: float, rng: Rng) -> np.ndarray:
    empty = ~mask.reshape(1, -1)
    count = _growth_count(empty.sum(1), sparsity, mask.size)
    return mask | _choose(empty, count, rng).reshape(mask.shape)


def grow_block(mask: np.ndarray, sparsity: float, rng: Rng) -> np.ndarray:
    blocks = mask.reshape(mask.shape[0] // 4, 4, -1)
    empty = ~blocks.any(1)
    flat = empty.reshape(1, -1)
    chosen = _choose(flat, _growth_count(flat.sum(1), sparsity, flat.size), rng).reshape(empty.shape)
    return mask | np.repeat(chosen[:, None, :], 4, axis=1).reshape(mask.shape)


def grow_channel(mask: np.ndarray, sparsity: float, rng: Rng) -> np.ndarray:
    empty = ~mask.reshape(mask.shape[0], -1).any(1)
    count = np.array([max(int(empty.sum()) - filters_pruned(mask.shape[0], sparsity), 0)])
    grown = _choose(empty.reshape(1, -1), count, rng).reshape(-1)
    return mask | np.broadcast_to(grown.reshape(-1, *([1] * (mask.ndim - 1))), mask.shape)


def grow_pattern(mask: np.ndarray, sparsity: float, rng: Rng) -> np.ndarray:
    """Per filter, `int(#empty - r_k * C)` empty kernels get a random pattern each (filter balance kept)."""
    empty = ~mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1)
    chosen = _choose(empty, _growth_count(empty.sum(1), _kernel_ratio(sparsity), empty.shape[1]), rng)
    ids = rng.integers(0, 8, chosen.shape)
    out = mask.copy()
    out[chosen] = _pattern_masks()[ids[chosen]]
    return out


#: (prune, grow) by MEST scheme name.
SCHEMES: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], Callable[[np.ndarray, float, Rng], np.ndarray]]] = {
    "irregular": (prune_irregular, grow_irregular),
    "free_block_prune_column_4": (prune_block, grow_block),
    "channel": (prune_channel, grow_channel),
    "pattern+filter_balance": (prune_pattern_filter_balance, grow_pattern),
}


def mutate(weight: np.ndarray, scheme: str, lower: float, upper: float, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """One Elastic Mutation of a layer: (survivors of the prune, the grown mask)."""
    prune, grow = SCHEMES[scheme]
    survivors = prune(np.abs(weight), lower)
    if upper == 0.0:
        return survivors, np.ones_like(survivors)
    if upper == lower:
        return survivors, survivors
    return survivors, grow(survivors, upper, rng)
