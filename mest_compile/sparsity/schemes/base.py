"""What a sparsity scheme is: a projection of scores onto legal masks, and a growth rule.

Schemes are stateless objects registered by name in `SCHEMES` (see `__init__.py`). Masks are
structural: a mask is legal for its scheme by construction (a block scheme never keeps half a
block), which is what lets the compiler pack it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return `sparsity` as a float, or raise a `MestError` unless it lies in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise MestError(f"{what} must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise MestError(f"{what} must be in [0, 1), got {sparsity!r}")
    return value


class Scheme(ABC):
    """A sparsity scheme.

    Subclasses set `name` and `unit` (what growth adds back: "weight", "kernel", "block" or
    "filter") and implement `prune` and `grow`. Weights are conv weights `(O, I, kh, kw)`;
    schemes that make sense for linear weights `(O, I)` accept those too.
    """

    name: str = ""
    unit: str = "weight"
    # What `prune` removes: "weight" (any single weight), "position" (positions inside a kernel,
    # never a whole kernel), "kernel", "block" or "filter". A compound checks every part's
    # removals against the other parts' `preserved_by`, so it can only build legal masks.
    removes: str = "weight"
    # The removal units after which a mask of this scheme is still legal.
    preserved_by: frozenset[str] = frozenset()
    # In a compound, the part with the highest precedence grows (a grown pattern kernel is also
    # a balanced kernel, but a grown full kernel is no pattern).
    growth_precedence: int = 0

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise a `MestError` naming the problem if this scheme cannot take a weight of `shape`."""
        if len(shape) not in (2, 4):
            raise MestError(f"scheme {self.name!r} needs a conv (O,I,kh,kw) or linear (O,I) weight, got shape {tuple(shape)}")

    @abstractmethod
    def prune(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None = None) -> torch.Tensor:
        """One-shot mask at `sparsity` (a bool tensor shaped like `weight`).

        Args:
            weight: the live weight.
            sparsity: the requested layer sparsity in [0, 1), with the reference's meaning for
                this scheme (the pattern kernel-level conversion happens inside).
            score: element-wise importance, non-negative, shaped like `weight`; defaults to
                `weight.abs()`. Group schemes aggregate it with an L2 norm, which for the default
                equals the reference's norm of the weights.
        """

    @abstractmethod
    def grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        sparsity: float,
        generator: torch.Generator,
        compat: Compat = Compat(),
    ) -> torch.Tensor:
        """Randomly regrow units of the pruned `mask` until the layer reaches `sparsity`.

        Returns a new mask (a superset of `mask`); never modifies its inputs. `weight` is the
        pruned weight, needed only by the reference's signed-sum emptiness test.
        """

    def prepare(self, weight: torch.Tensor, sparsity: float, score: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Validate `prune`'s arguments; return the sparsity as a float and the (default) score."""
        self.check(tuple(weight.shape))
        value = check_sparsity(sparsity)
        if score is None:
            return value, weight.detach().abs()
        if tuple(score.shape) != tuple(weight.shape):
            raise MestError(f"score shape {tuple(score.shape)} differs from weight shape {tuple(weight.shape)}")
        return value, score.detach()

    def prepare_growth(self, weight: torch.Tensor, mask: torch.Tensor, sparsity: float) -> tuple[float, torch.Tensor]:
        """Validate `grow`'s arguments; return the sparsity as a float and a bool copy of `mask`."""
        self.check(tuple(weight.shape))
        value = check_sparsity(sparsity)
        if tuple(mask.shape) != tuple(weight.shape):
            raise MestError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
        return value, mask.detach().to(dtype=torch.bool, copy=True)

    def is_legal(self, mask: torch.Tensor) -> bool:
        """Whether `mask` has this scheme's structure (every mask is legal for `irregular`)."""
        return True

    def __repr__(self) -> str:
        return f"<scheme {self.name}>"
