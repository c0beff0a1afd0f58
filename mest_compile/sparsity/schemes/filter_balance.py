"""`filter_balance`: per output filter, drop the same number of weakest kernels (MEST §1.3).

Also home of the kernel-level ratio and of balanced kernel growth, which `pattern` reuses.
"""

from __future__ import annotations

import numpy as np
import torch

from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes._ops import as_numpy32, choose, growth_count
from mest_compile.sparsity.schemes.base import Scheme


def kernel_ratio(sparsity: float) -> float:
    """The reference's kernel-level ratio `1 - (1 - r) * 9/4` for 3x3 kernels.

    It assumes every surviving kernel keeps 4 of its 9 entries (a pattern), so that dropping a
    fraction `r_k` of the kernels gives overall sparsity `r`. Evaluated with the reference's
    operation order, which the kept counts depend on (0.9 -> 0.775 keeps 8 of 32 kernels).
    """
    return 1 - ((1 - sparsity) * 9 / 4)


def is_3x3(shape: tuple[int, ...]) -> bool:
    """Whether `shape` is a conv weight with 3x3 kernels, the case the 9/4 conversion is for.

    The reference tests only the kernel height; a 3xk kernel (k != 3) is not converted here.
    """
    return len(shape) == 4 and tuple(shape[2:]) == (3, 3)


def kernels_kept(mask: torch.Tensor) -> torch.Tensor:
    """(O, I) bool: which kernels of a conv mask (or entries of a linear one) keep any position."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=-1)


def grow_kernels(empty: torch.Tensor, sparsity_k: float, generator: torch.Generator) -> torch.Tensor:
    """Per filter, choose `int(#empty_o - sparsity_k * I)` of its empty kernels uniformly.

    Args:
        empty: (O, I) bool, the kernels that count as empty.
        sparsity_k: the kernel-level target sparsity.
        generator: the source of randomness.

    Returns:
        (O, I) bool, the kernels to grow. A balanced input (the same number of empty kernels in
        every filter) stays balanced.
    """
    count = growth_count(empty.sum(dim=1), sparsity_k, empty.shape[1])
    return choose(empty, count, generator)


class FilterBalance(Scheme):
    """Every output filter keeps the same number `I - int(I * r_k)` of input kernels.

    `r_k = kernel_ratio(r)` for 3x3 kernels and `r` otherwise, as in the reference, so alone on a
    3x3 conv it reaches kernel sparsity `r_k` rather than `r`; it is meant to follow `pattern`.
    Which kernels drop among equal norms follows `np.argpartition`, like the reference.

    The mask is structural: kept kernels are kept whole. The reference returns `w != 0`, which
    differs only at exactly-zero weights inside kept kernels. Legality is "the same number of
    kept kernels in every filter"; a kept kernel may be partial (inside `pattern+filter_balance`).
    """

    name = "filter_balance"
    unit = "kernel"
    removes = "kernel"
    # Positions removed inside kernels (never a whole kernel) leave the per-filter count alone.
    preserved_by = frozenset({"position"})

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        value, score = self.prepare(weight, sparsity, score)
        n_out, n_in = weight.shape[0], weight.shape[1]
        ratio = kernel_ratio(value) if is_3x3(tuple(weight.shape)) else value
        drop = min(max(int(n_in * ratio), 0), n_in)  # truncation toward 0: negative r_k drops none
        norms = np.linalg.norm(as_numpy32(score).reshape(n_out, n_in, -1), 2, axis=2)
        kept = np.ones((n_out, n_in), dtype=bool)
        if drop == n_in:
            kept[:] = False
        elif drop > 0:
            np.put_along_axis(kept, np.argpartition(norms, drop, axis=1)[:, :drop], False, axis=1)
        kept_t = torch.from_numpy(kept).to(weight.device)
        return kept_t.reshape(n_out, n_in, *([1] * (weight.dim() - 2))).expand(weight.shape).clone()

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Grow whole kernels, per filter, to kernel-level sparsity `r_k` (our rule; MEST has none).

        Each filter gets `int(#empty_o - r_k * I)` of its empty kernels back, chosen uniformly,
        so a balanced mask stays balanced. `compat` has no switch for this scheme.
        """
        value, mask = self.prepare_growth(weight, mask, sparsity)
        ratio = kernel_ratio(value) if is_3x3(tuple(weight.shape)) else value
        grown = grow_kernels(~kernels_kept(mask), ratio, generator)
        return mask | grown.reshape(*grown.shape, *([1] * (mask.dim() - 2))).expand(mask.shape)

    def is_legal(self, mask: torch.Tensor) -> bool:
        if mask.dim() not in (2, 4):
            return False
        per_filter = kernels_kept(mask).sum(dim=1)
        return bool((per_filter == per_filter[0]).all()) if per_filter.numel() else True
