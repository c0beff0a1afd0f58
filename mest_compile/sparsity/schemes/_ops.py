"""Numerics shared by the schemes: the reference's thresholds and seeded uniform choice."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy32(tensor: torch.Tensor) -> np.ndarray:
    """`tensor` as a float32 NumPy array (it may share memory: treat it as read-only).

    The reference computes every threshold and norm with NumPy on float32 arrays; doing the same
    is what makes our masks bit-identical to its masks (torch reduces in a different order).
    """
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def threshold(values: np.ndarray, sparsity: float) -> np.floating:
    """The reference's pruning threshold: NumPy's linear-interpolation percentile at `sparsity*100`."""
    return np.percentile(values, sparsity * 100)


def growth_count(n_empty: torch.Tensor, sparsity: float, n_units: int) -> torch.Tensor:
    """MEST's growth count `int(n_empty - sparsity * n_units)`, element-wise, clamped to [0, n_empty].

    The truncation toward zero is the reference's; the clamp replaces its crash (`np.random.choice`
    raises on a negative count) with "grow nothing".
    """
    # float64 with `sparsity * n_units` computed in Python: the same operations as the reference.
    raw = (n_empty.to(torch.float64) - sparsity * n_units).trunc().to(torch.long)
    return torch.minimum(raw.clamp(min=0), n_empty.to(torch.long))


def choose(candidates: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row of `candidates` (R, C), pick `counts[r]` candidates uniformly without replacement.

    Ranks i.i.d. uniform keys, so the draw depends only on `generator` and the shape, not on how
    many positions are picked. Returns a bool (R, C) tensor on `candidates`' device.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=generator.device).to(candidates.device)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates rank after every candidate
    order = keys.argsort(dim=-1, stable=True)
    # The first counts[r] positions of row r's order are its picks; scatter them back in place
    # (one sort instead of two for the ranks).
    in_rank_order = torch.arange(candidates.shape[-1], device=candidates.device) < counts.to(candidates.device).reshape(-1, 1)
    picked = torch.zeros_like(candidates).scatter_(-1, order, in_rank_order.expand_as(candidates))
    return picked & candidates
