"""`pattern`: every 3x3 kernel keeps one of MEST's 8 four-entry patterns (MEST §1.2, §2.3)."""

from __future__ import annotations

import numpy as np
import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes._ops import as_numpy32
from mest_compile.sparsity.schemes.base import Scheme
from mest_compile.sparsity.schemes.filter_balance import grow_kernels, kernel_ratio, kernels_kept

# MEST's patterns 1..8 in its order (row i is pattern i+1); True = kept. The order matters: ties
# between patterns go to the lowest id, so an all-zero kernel gets PATTERNS[0].
PATTERNS: torch.Tensor = torch.tensor(
    [
        [[0, 0, 0], [0, 1, 1], [0, 1, 1]],  # 1: lower-right 2x2
        [[0, 0, 0], [1, 1, 0], [1, 1, 0]],  # 2: lower-left 2x2
        [[0, 1, 1], [0, 1, 1], [0, 0, 0]],  # 3: upper-right 2x2
        [[1, 1, 0], [1, 1, 0], [0, 0, 0]],  # 4: upper-left 2x2
        [[0, 0, 0], [0, 0, 1], [1, 1, 1]],  # 5: the only one without the centre
        [[0, 0, 0], [1, 1, 1], [0, 1, 0]],  # 6
        [[0, 1, 0], [0, 1, 1], [0, 1, 0]],  # 7
        [[0, 1, 0], [1, 1, 0], [0, 1, 0]],  # 8
    ],
    dtype=torch.bool,
)


def kernel_patterns(mask: torch.Tensor) -> torch.Tensor:
    """(O, I) long: each kernel's MEST pattern id 1..8, 0 for an empty kernel, -1 for neither."""
    flat = mask.reshape(mask.shape[0], mask.shape[1], 1, 9)
    match = (flat == PATTERNS.to(mask.device).reshape(1, 1, 8, 9)).all(dim=-1)
    ids = torch.where(match.any(dim=-1), match.to(torch.uint8).argmax(dim=-1) + 1, -1)
    return torch.where(flat.reshape(flat.shape[0], flat.shape[1], 9).any(dim=-1), ids, 0)


def _pattern_norms(kernels: torch.Tensor) -> torch.Tensor:
    """(O, I, 8) float32: each kernel's L2 norm over each pattern's kept positions.

    Reproduces the reference's numerics bit for bit, because ties and near-ties decide the
    pattern: `np.linalg.norm` of a float32 kernel is a float32 `dot` (NumPy + OpenBLAS: float32
    products summed in float64 in position order, rounded to float32), then a float32 sqrt.
    """
    squares = (kernels * kernels).to(torch.float64)
    norms = []
    for pattern in PATTERNS.reshape(8, 9):
        total = torch.zeros(squares.shape[:2], dtype=torch.float64, device=squares.device)
        for position in pattern.nonzero().flatten().tolist():
            total = total + squares[..., position]
        # sqrt of the float32 sum, correctly rounded: float64 sqrt rounded to float32 is exact
        # rounding, while torch's vectorised float32 sqrt can be 1 ulp off (it was, here).
        norms.append(total.to(torch.float32).to(torch.float64).sqrt().to(torch.float32))
    return torch.stack(norms, dim=-1)


class Pattern(Scheme):
    """Each kernel keeps the pattern that leaves the largest score norm; sparsity is ignored.

    Ties go to the lowest pattern id (the reference's `max` keeps the first maximum), with norms
    rounded exactly as the reference rounds them, so near-ties break the same way.

    The mask is structural: every kernel carries its pattern, even an all-zero one (pattern 1).
    The reference returns `w != 0`, which differs only at exactly-zero weights.
    """

    name = "pattern"
    unit = "kernel"
    removes = "position"
    # Removing whole kernels or filters leaves every remaining kernel on its pattern.
    preserved_by = frozenset({"kernel", "filter"})
    growth_precedence = 1

    def check(self, shape: tuple[int, ...]) -> None:
        super().check(shape)
        if len(shape) != 4 or tuple(shape[2:]) != (3, 3):
            raise MestError(f"scheme 'pattern' needs 3x3 conv kernels, got weight shape {tuple(shape)}")

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        _, score = self.prepare(weight, sparsity, score)
        flat = score.detach().to(torch.float32).reshape(weight.shape[0], weight.shape[1], 9)
        norms = _pattern_norms(flat)
        best = norms.argmax(dim=-1)  # documented to return the first maximal index
        return PATTERNS.to(weight.device)[best.to(weight.device)]

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Per filter, give `int(#empty_o - r_k * I)` empty kernels a random pattern each.

        `r_k = kernel_ratio(sparsity)`. A kernel is empty when no position is kept; with
        `compat.signed_sum_empty`, when its pruned weights sum to exactly 0 (the reference), in
        which case a live kernel can be picked and overwritten by the new pattern, so the result
        is then not always a superset of `mask`.
        """
        value, mask = self.prepare_growth(weight, mask, sparsity)
        if compat.signed_sum_empty:
            pruned = as_numpy32(torch.where(mask, weight.detach(), torch.zeros_like(weight)))
            empty = torch.from_numpy(np.sum(pruned, axis=(2, 3)) == 0).to(mask.device)
        else:
            empty = ~kernels_kept(mask)
        chosen = grow_kernels(empty, kernel_ratio(value), generator)
        ids = torch.randint(0, 8, chosen.shape, generator=generator, device=generator.device)
        mask[chosen] = PATTERNS.to(mask.device)[ids.to(mask.device)[chosen]]
        return mask

    def is_legal(self, mask: torch.Tensor) -> bool:
        if mask.dim() != 4 or tuple(mask.shape[2:]) != (3, 3):
            return False
        return bool((kernel_patterns(mask) >= 0).all())
