"""Rehearsal losses on buffer draws: ER and DER++ (DER is DER++ with beta 0), by name.

A method gets the model, a way to draw buffer batches (augmented like the training batches when the
dataset is) and its weights and returns the extra loss of one step;
the trainer's current-batch cross-entropy is computed by the step engine as always, and the two
gradients add up (`backward` accumulates), which is DER++'s `CE + alpha MSE + beta CE'`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.registry import Registry

# draw(size) -> a buffer batch: a dict of x, y, logits.
Draw = Callable[[int], dict[str, torch.Tensor]]
# method(model, draw, batch_size, alpha, beta) -> the step's rehearsal loss.
Replay = Callable[[nn.Module, Draw, int, float, float], torch.Tensor]


def er_loss(model: nn.Module, draw: Draw, batch_size: int, alpha: float, beta: float) -> torch.Tensor:
    """Experience replay: cross-entropy on one buffer draw, weighted by beta (1 is plain ER)."""
    batch = draw(batch_size)
    return beta * F.cross_entropy(model(batch["x"]), batch["y"])


def derpp_loss(model: nn.Module, draw: Draw, batch_size: int, alpha: float, beta: float) -> torch.Tensor:
    """DER++: alpha x MSE to the stored logits on one draw, beta x cross-entropy on a second draw.

    Two separate forwards, as DER++ and SparCL run them (each with its own batch-norm statistics).
    """
    first = draw(batch_size)
    loss = alpha * F.mse_loss(model(first["x"]), first["logits"])
    if beta:
        second = draw(batch_size)
        loss = loss + beta * F.cross_entropy(model(second["x"]), second["y"])
    return loss


REPLAY: Registry[Replay] = Registry("replay method")
REPLAY.add("er", er_loss)
REPLAY.add("derpp", derpp_loss, aliases=("der++",))
