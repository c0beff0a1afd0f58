"""Step engines: what runs one training step (forward, loss, backward, optimizer) for the trainer.

`torch` is PyTorch eager, each sparse layer a masked dense conv or, with `--compiled`, compiled
kernels behind torch ops. `tvm` runs the whole step compiled by TVM (`mest_compile.compiler.step`),
named here by module path so that the trainer imports no compiler unless a run asks for it.

An engine owns the step's arrays between `begin_epoch` and `end_epoch`: the model, its masks and
the optimizer's state are the truth outside that span (evaluation, mutation, checkpoints), so an
engine that keeps its own copies pushes them in at `begin_epoch` and writes them back at
`end_epoch`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.errors import MestError
from mest_compile.registry import Registry

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


class StepEngine:
    """Runs training steps; the base is PyTorch eager (the `torch` engine)."""

    name = "torch"
    # The step leaves the batch's gradients in `.grad` at `after_backward` and `optimizer.step()`
    # applies them, so an algorithm can average them across processes (data-parallel training).
    data_parallel = True

    def setup(self, trainer: Trainer) -> None:
        """Check the run can use this engine; called once, after the model, masks and optimizer exist."""
        if trainer.config.compile.rpc is not None:
            raise MestError("--rpc trains on a board with --engine tvm; --engine torch runs in this process")

    def begin_epoch(self, trainer: Trainer) -> None:
        """The epoch's steps start: masks may have changed since the last epoch (mutation)."""

    def step(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor, step: int, last: bool) -> tuple[float, torch.Tensor]:
        """One optimizer step on batch `(x, y)`; emits `after_backward`. Returns the loss and the logits."""
        logits = trainer.model(x)
        loss = trainer.training_loss(logits, y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.emit("after_backward", step, last)
        trainer.optimizer.step()
        return loss.item(), logits.detach()

    def end_epoch(self, trainer: Trainer) -> None:
        """The epoch's steps are done: the model and optimizer must hold the trained state."""

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """The summary's `engine` field."""
        return {"name": self.name}


#: Engine name -> a factory `() -> StepEngine`, or "module:attribute" imported when a run picks it.
ENGINES: Registry[Any] = Registry("step engine")
ENGINES.add("torch", StepEngine)
ENGINES.add("tvm", "mest_compile.compiler.step.engine:TvmEngine")


def build_engine(name: str) -> StepEngine:
    """The engine registered as `name` (importing its module first when named by path).

    Raises:
        MestError: an unknown engine name.
    """
    factory = ENGINES.get(name)
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory()
