"""`channel`: whole output filters (MEST's README lists it; its code does not implement it).

Designed here as a first-class scheme: a pruned filter is a dropped output channel, which the
compiler turns into a dense conv over the kept filters.
"""

from __future__ import annotations

import math

import torch

from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes._ops import choose
from mest_compile.sparsity.schemes.base import Scheme


def filters_pruned(n_filters: int, sparsity: float) -> int:
    """How many of `n_filters` filters a layer at `sparsity` prunes: `floor(sparsity * O + 0.5)`.

    The count nearest to the request, since one filter can be a large share of a layer; an exact
    half rounds toward pruning so a tie never exceeds the memory budget. A layer at sparsity
    >= 1 - 1/(2*O) is pruned entirely, so a fully pruned layer is representable.

    Example:
        >>> filters_pruned(16, 0.9), filters_pruned(16, 0.97), filters_pruned(3, 0.5)
        (14, 16, 2)
    """
    return min(n_filters, math.floor(sparsity * n_filters + 0.5))


def _filters(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1)


class Channel(Scheme):
    """Prune the `filters_pruned(O, s)` filters with the smallest L2 score norm.

    Ties prune the lower filter index first (a stable ascending sort), so the mask is a
    deterministic function of the score. Growth uses the same count rule, so pruning at any
    sparsity then growing to `s` keeps exactly as many filters as pruning at `s`.
    """

    name = "channel"
    unit = "filter"
    removes = "filter"
    preserved_by = frozenset({"filter"})

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        value, score = self.prepare(weight, sparsity, score)
        norms2 = _filters(score.to(torch.float64)).pow(2).sum(dim=1)  # ranking by squares = by norms
        drop = torch.sort(norms2, stable=True).indices[: filters_pruned(weight.shape[0], value)]
        kept = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        kept[drop.to(weight.device)] = False
        return kept.reshape(-1, *([1] * (weight.dim() - 1))).expand(weight.shape).clone()

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Regrow uniformly chosen empty filters (whole) until `filters_pruned(O, s)` stay empty."""
        value, mask = self.prepare_growth(weight, mask, sparsity)
        empty = ~_filters(mask).any(dim=1)
        n_empty = int(empty.sum())
        count = torch.tensor([max(n_empty - filters_pruned(weight.shape[0], value), 0)])
        grown = choose(empty.reshape(1, -1), count, generator).reshape(-1)
        return mask | grown.reshape(-1, *([1] * (mask.dim() - 1))).expand(mask.shape)

    def is_legal(self, mask: torch.Tensor) -> bool:
        if mask.dim() not in (2, 4):
            return False
        rows = _filters(mask)
        return bool((rows.all(dim=1) | ~rows.any(dim=1)).all())
