"""`free_block_prune_column_4` (alias `block`): 4x1 blocks of consecutive filters (MEST §1.4).

A block is 4 consecutive output filters at one (in_channel, kh, kw) position; a conv weight
(O, I, kh, kw) has (O/4) * I*kh*kw of them, a linear weight (O, I) has (O/4) * I.
"""

from __future__ import annotations

import numpy as np
import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes._ops import as_numpy32, choose, growth_count, threshold
from mest_compile.sparsity.schemes.base import Scheme

BLOCK = 4  # filters per block, the "4" of the reference's name


def _blocks(tensor: torch.Tensor) -> torch.Tensor:
    """View (O, ...) as (O/4, 4, columns): axis 1 runs over the filters of one block."""
    return tensor.reshape(tensor.shape[0] // BLOCK, BLOCK, -1)


def _expand(per_block: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Broadcast a (O/4, columns) block mask back to the weight's shape."""
    groups, columns = per_block.shape
    return per_block.reshape(groups, 1, columns).expand(groups, BLOCK, columns).reshape(shape)


class Block(Scheme):
    """Keep the blocks whose score L2 norm is strictly above the layer's percentile.

    Blocks with `norm <= np.percentile(norms, sparsity*100)` are pruned; norms are computed with
    NumPy in float32 as in the reference, so the mask is identical to the reference's (a
    32x16x3x3 conv at 0.9 keeps 116 of 1152 blocks).
    """

    name = "free_block_prune_column_4"
    unit = "block"
    removes = "block"
    preserved_by = frozenset({"block"})

    def check(self, shape: tuple[int, ...]) -> None:
        super().check(shape)
        if shape[0] % BLOCK:
            raise MestError(f"scheme 'block' needs out-channels divisible by {BLOCK}, got {shape[0]} (weight shape {tuple(shape)})")

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        value, score = self.prepare(weight, sparsity, score)
        groups = weight.shape[0] // BLOCK
        norms = np.linalg.norm(as_numpy32(score).reshape(groups, BLOCK, -1), 2, axis=1)
        kept = torch.from_numpy(norms > threshold(norms, value)).to(weight.device)
        return _expand(kept, weight.shape)

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Add `int(#empty - sparsity * #blocks)` empty blocks, chosen uniformly.

        A block is empty when none of its positions is kept; with `compat.signed_sum_empty`, when
        its pruned weights sum to exactly 0 (the reference). The reference raises `ValueError`
        when the count is negative (growing to a sparser level than the prune); we grow nothing.
        """
        value, mask = self.prepare_growth(weight, mask, sparsity)
        if compat.signed_sum_empty:
            pruned = as_numpy32(torch.where(mask, weight.detach(), torch.zeros_like(weight)))
            sums = np.sum(pruned.reshape(weight.shape[0] // BLOCK, BLOCK, -1), axis=1)
            empty = torch.from_numpy(sums == 0).to(mask.device)
        else:
            empty = ~_blocks(mask).any(dim=1)
        flat = empty.reshape(1, -1)
        chosen = choose(flat, growth_count(flat.sum(dim=1), value, flat.numel()), generator)
        return mask | _expand(chosen.reshape(empty.shape), mask.shape)

    def is_legal(self, mask: torch.Tensor) -> bool:
        if mask.dim() not in (2, 4) or mask.shape[0] % BLOCK:
            return False
        blocks = _blocks(mask)
        return bool((blocks.all(dim=1) | ~blocks.any(dim=1)).all())
