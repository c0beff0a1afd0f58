"""Importance scores: what the Elastic Mutation prune keeps (the "what" of prune-and-grow).

A score maps a weight (and, when it uses one, the last observed gradient) to a non-negative
element-wise importance; the scheme projects it onto a legal mask. MEST's score is
``|w| + lambda * |grad|`` with lambda = 0 in every shipped script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mest_compile.registry import Registry


@dataclass(frozen=True)
class Score:
    """A registered importance score.

    Attributes:
        name: the registered name.
        uses_grad: whether the score reads the gradient snapshot (the mutation only keeps
            snapshots for scores that do).
        fn: ``fn(weight, grad, lmd) -> score``; `grad` is the last observed weight gradient or
            None when none was observed yet.
    """

    name: str
    uses_grad: bool
    fn: Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor]

    def __call__(self, weight: torch.Tensor, grad: torch.Tensor | None, lmd: float) -> torch.Tensor:
        return self.fn(weight.detach(), grad, lmd)


SCORES: Registry[Score] = Registry("score")


def _magnitude(weight: torch.Tensor, grad: torch.Tensor | None, lmd: float) -> torch.Tensor:
    return weight.abs()


def _magnitude_grad(weight: torch.Tensor, grad: torch.Tensor | None, lmd: float) -> torch.Tensor:
    # Without a gradient (the update at epoch 0 runs before any training) this is the magnitude,
    # which is also what the reference computes when w.grad is None.
    if grad is None or lmd == 0.0:
        return weight.abs()
    return weight.abs() + lmd * grad.to(device=weight.device, dtype=weight.dtype).abs()


SCORES.add("magnitude", Score("magnitude", False, _magnitude))
SCORES.add("magnitude+grad", Score("magnitude+grad", True, _magnitude_grad))
