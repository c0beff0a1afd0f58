"""`irregular`: unstructured magnitude pruning, element-wise random growth (MEST §1.1, §2.3)."""

from __future__ import annotations

import torch

from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes._ops import as_numpy32, choose, growth_count, threshold
from mest_compile.sparsity.schemes.base import Scheme

# Every removal unit is a union of single weights, so no removal can make a mask illegal here.
ALL_UNITS = frozenset({"weight", "position", "kernel", "block", "filter"})


class Irregular(Scheme):
    """Keep the weights whose score is strictly above the layer's percentile.

    Identical to the reference mask: `score > np.percentile(score, sparsity*100)` on float32,
    so every score equal to the threshold is pruned. With distinct scores a layer of `N` weights
    keeps `N - 1 - floor(sparsity*(N-1))` (a 32x32x3x3 conv keeps 922 at 0.9, 738 at 0.92).
    """

    name = "irregular"
    unit = "weight"
    removes = "weight"
    preserved_by = ALL_UNITS

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        value, score = self.prepare(weight, sparsity, score)
        scores = as_numpy32(score)
        return torch.from_numpy(scores > threshold(scores, value)).to(weight.device)

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Add `int(#pruned - sparsity*N)` positions chosen uniformly among the pruned ones.

        Candidates are the positions outside `mask`. The reference takes the positions where the
        pruned weight is 0, which also counts kept weights that happen to be exactly 0.
        """
        value, mask = self.prepare_growth(weight, mask, sparsity)
        empty = ~mask.reshape(1, -1)
        count = growth_count(empty.sum(dim=1), value, mask.numel())
        return mask | choose(empty, count, generator).reshape(mask.shape)
