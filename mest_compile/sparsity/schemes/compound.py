"""Compound schemes such as `pattern+filter_balance`: parts applied in sequence, as MEST does."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes.base import Scheme


class Compound(Scheme):
    """Parts pruned one after another on the live weight; the mask is the AND of theirs.

    Each part sees the weight and the score multiplied by the masks of the parts before it (in
    MEST's `update_mask` the parameter is masked in place between parts), with the same
    sparsity. Growth is the part with the highest `growth_precedence` (for MEST's
    `pattern+filter_balance`: pattern growth, as in the reference). A mask is legal when it is
    legal for every part.

    Parts are checked against each other when the compound is built: a part whose removals would
    break another part's structure (`irregular+block` would keep half blocks) is refused.
    """

    def __init__(self, parts: Sequence[Scheme]) -> None:
        self.parts = tuple(parts)
        self.name = "+".join(part.name for part in self.parts)
        if len(self.parts) < 2:
            raise MestError(f"a compound scheme needs at least two parts, got {self.name!r}")
        if len({part.name for part in self.parts}) != len(self.parts):
            raise MestError(f"compound scheme {self.name!r} repeats a part")
        for part in self.parts:
            if isinstance(part, Compound):
                raise MestError(f"compound scheme {self.name!r} nests another compound")
            for other in self.parts:
                if other is not part and other.removes not in part.preserved_by:
                    raise MestError(
                        f"compound scheme {self.name!r}: {other.name!r} removes whole {other.removes}s, "
                        f"which leaves {part.name!r} masks illegal"
                    )
        # max() keeps the first of equal precedences: the earlier part grows.
        self.grower = max(self.parts, key=lambda part: part.growth_precedence)
        self.unit = self.grower.unit

    def check(self, shape: tuple[int, ...]) -> None:
        for part in self.parts:
            part.check(shape)

    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        value, score = self.prepare(weight, sparsity, score)
        mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        for part in self.parts:
            live = weight.detach() * mask
            mask = mask & part.prune(live, value, score * mask)
        return mask

    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        self.check(tuple(weight.shape))
        return self.grower.grow(weight, mask, sparsity, generator, compat)

    def is_legal(self, mask: torch.Tensor) -> bool:
        return all(part.is_legal(mask) for part in self.parts)
