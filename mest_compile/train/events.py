"""Training algorithms as plug-ins on the trainer's events (like Composer's algorithms or Lightning's callbacks).

The trainer runs the plain loop: batches, forward, loss, backward, optimizer step, evaluation,
checkpoints. Everything MEST adds on top of it (Elastic Mutation, data efficiency, compiled
kernels, and later SpFDE, AGC, SparCL) is a `TrainingAlgorithm` that acts on the events the
trainer emits, so the loop never names an algorithm and a new one never edits the loop.

Per run the trainer emits, for every enabled algorithm in registration order::

    setup                                   once, after model, masks and optimizer exist
    on_fit_start                            every fit() call
      on_epoch_start -> record fields       every epoch, before training
        shard_batch -> part                 every step: the part of the batch this process trains on
        before_step                         every step, before the forward
        training_logits -> logits           the forward's logits the loss is computed from
        after_backward                      after loss.backward(), before optimizer.step()
        gather_outputs -> loss, logits      after optimizer.step(): the whole batch's outputs
        after_step                          after optimizer.step()
      on_epoch_end(record)
      on_checkpoint_save -> state           after every epoch
    summary -> fields, on_fit_end(summary)  at the end of fit()

`writes_outputs` says whether this process writes checkpoints, metrics, the summary, plots and
progress. `on_mask_update` comes whenever an algorithm announces changed masks through
`Trainer.masks_updated`, and `on_checkpoint_load` once, when a run resumes.

Algorithms are registered in `ALGORITHMS` as an `AlgorithmSpec`: the config section it reads
(its own frozen dataclass), when it is enabled, and how to build it (a callable, or a
"module:attribute" path imported only when enabled, so the compiler side stays unimported).
`mest_compile.algorithms` registers the built-in ones and builds a run's algorithms.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.registry import Registry

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


class TrainingAlgorithm:
    """Base class: every event is a no-op, so an algorithm overrides only the events it acts on.

    The trainer is passed to every event (model, layers, optimizer, data, config, run
    directory); an algorithm keeps its own state and returns it from `state_dict`, which the
    trainer stores in the checkpoint under the algorithm's registered name.
    """

    def setup(self, trainer: Trainer) -> None:
        """Build what depends on the model, masks and optimizer; called once, before any resume."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """A `fit()` call starts (after a resume too)."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """A `fit()` call ended with `summary` (already written)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any] | None:
        """Start of `epoch`, before its batches are drawn.

        Returns:
            Fields merged into the epoch's record (metrics.jsonl), or None.
        """
        return None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """End of an epoch: `record` is complete (training, evaluation, timing)."""

    def before_step(self, trainer: Trainer, step: int, batch_index: torch.Tensor) -> None:
        """Before the forward pass of step `step` on the examples `batch_index`."""

    def training_logits(self, trainer: Trainer, logits: torch.Tensor) -> torch.Tensor:
        """The logits the step's loss is computed from, given the current batch's forward output.

        Identity by default; a class-incremental run masks other tasks' classes (SparCL's
        cl_mask). The step still returns, and algorithms still see, the unmasked logits.
        """
        return logits

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """Gradients exist, the optimizer has not stepped; `last` marks the epoch's last step."""

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """After `optimizer.step()`; `logits` are the step's forward output on examples `index`."""

    def on_mask_update(self, trainer: Trainer, epoch: int, layers: tuple[str, ...]) -> None:
        """The masks of `layers` changed at `epoch` (announced by the algorithm that changed them)."""

    def select_examples(self, trainer: Trainer, active: torch.Tensor) -> torch.Tensor:
        """The training examples (dataset indices) batches are drawn from, narrowed from `active`.

        Data-removal algorithms own which examples remain; the trainer asks every algorithm in
        turn, starting from all examples. Must keep the order of `active`.
        """
        return active

    def shard_batch(self, trainer: Trainer, size: int) -> slice | None:
        """The part of a batch of `size` examples this process trains on, or None for all of it.

        Data-parallel training splits every batch across processes; at most one algorithm may.
        """
        return None

    def gather_outputs(self, trainer: Trainer, loss: float, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The step's mean loss and logits over the whole batch, from this process's part of it.

        Called before `after_step`, so every algorithm sees the whole batch's outputs.
        """
        return loss, logits

    def writes_outputs(self, trainer: Trainer) -> bool:
        """Whether this process writes the run's files and progress (one process of a data-parallel run)."""
        return True

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """Fields this algorithm adds to the run's summary (summary.json)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after a checkpoint (plain containers of tensors)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def on_checkpoint_save(self, trainer: Trainer) -> dict[str, Any]:
        """The state stored in the checkpoint; `state_dict()` unless the trainer is needed."""
        return self.state_dict()

    def on_checkpoint_load(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """Restore the state saved by `on_checkpoint_save` (called after `setup`)."""
        self.load_state_dict(state)


def _always(section: Any) -> bool:
    return True


@dataclass(frozen=True)
class AlgorithmSpec:
    """How the trainer finds, configures and builds one training algorithm.

    Example:
        >>> ALGORITHMS.add("toy", AlgorithmSpec(section="toy", config=ToyConfig, factory=Toy,
        ...                                     enabled=lambda c: c.toy))  # doctest: +SKIP
    """

    # Name of the algorithm's section in TrainConfig and in nested YAML (`mutation: {...}`).
    section: str
    # The section's frozen dataclass; its fields become flat settings and `train` flags.
    config: type
    # Builds the algorithm from its section: a callable, or "module:attribute" imported only when
    # the algorithm is enabled (the compiled kernels' module imports TVM).
    factory: Callable[[Any], TrainingAlgorithm] | str
    # Whether a run with this section uses the algorithm at all.
    enabled: Callable[[Any], bool] = _always
    # Record and summary fields at their "off" values: every run writes one schema of metrics.
    record_defaults: Mapping[str, Any] = field(default_factory=dict)
    summary_defaults: Mapping[str, Any] = field(default_factory=dict)

    def create(self, section: Any) -> TrainingAlgorithm:
        """The algorithm for `section`, importing its module first when named by path."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, attribute = factory.partition(":")
            factory = getattr(importlib.import_module(module), attribute)
        return factory(section)


ALGORITHMS: Registry[AlgorithmSpec] = Registry("training algorithm")
