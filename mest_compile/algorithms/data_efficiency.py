"""MEST's data efficiency as a training algorithm: forgetting statistics, then removing examples.

After every optimizer step the step's batch is recorded (correct, loss, margin: computed from the
forward pass the step trained on, before the update, as MEST does). At the start of
`remove_data_epoch` the least-forgotten examples (or those of a MEST importance file) leave the
training set once, MEST's importance file is written, and the statistics restart. The algorithm
owns which examples remain: the trainer draws its batches from `select_examples`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.data_efficiency import (ForgettingTracker, example_statistics, read_importance, removal,
                                                   write_importance)
from mest_compile.train.sections import require_non_negative, setting
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


@dataclass(frozen=True)
class DataEfficiencyConfig:
    """Forgetting statistics and example removal (the `data_efficiency` section, MEST_SPEC section 4)."""

    data_efficient: bool = setting(False, "record forgetting statistics during training")
    remove_data_epoch: int | None = setting(None, "remove examples at the start of this epoch (RM_EPOCH)")
    remove_n: int = setting(0, "number of least-forgotten examples to remove (REMOVE_N)")
    keep_lowest_n: int = setting(0, "skip this many least-forgotten examples before removing (KEEP_LOWEST_N)")
    sorting_file: str | None = setting(None, "MEST importance .pkl to remove by, instead of this run's statistics")
    # MEST's file is <name>_unforget_<zeros>.pkl.
    output_name: str = setting("mest", "prefix of the written importance file")

    def __post_init__(self) -> None:
        require_non_negative(self, "remove_n", "keep_lowest_n")


class DataEfficiency(TrainingAlgorithm):
    """Forgetting statistics after each step, removal at `remove_data_epoch`."""

    def __init__(self, config: DataEfficiencyConfig) -> None:
        self.config = config
        self.forgetting: ForgettingTracker | None = None
        # Dataset indices still trained on, in dataset order (None before setup).
        self.active: torch.Tensor | None = None

    def setup(self, trainer: Trainer) -> None:
        """One presentation history per training example; every example active."""
        n = len(trainer.data.train_y)
        self.forgetting = ForgettingTracker(n)
        self.active = torch.arange(n)

    def _ready(self) -> tuple[ForgettingTracker, torch.Tensor]:
        if self.forgetting is None or self.active is None:
            raise MestError("the data efficiency algorithm was used before setup(trainer)")
        return self.forgetting, self.active

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Remove the least-forgotten examples once, at the start of `remove_data_epoch`."""
        return {"removed": self._maybe_remove(trainer, epoch)}

    def _maybe_remove(self, trainer: Trainer, epoch: int) -> int:
        cfg = self.config
        forgetting, active = self._ready()
        if cfg.remove_data_epoch is None or epoch != cfg.remove_data_epoch or cfg.remove_n == 0:
            return 0
        num_examples = len(trainer.data.train_y)
        if cfg.sorting_file is not None:
            ordered = read_importance(cfg.sorting_file).indices
            if int(ordered.max()) >= num_examples:
                raise MestError(f"importance file {cfg.sorting_file!r} names example {int(ordered.max())}, "
                                f"but the training set has {num_examples}")
        else:
            npresentations = trainer.config.optim.epochs if trainer.compat.npresentations_from_epochs else None
            ordered, counts, zeros = forgetting.sorted_by_forgetting(npresentations=npresentations)
            if trainer.writer:
                write_importance(trainer.run_dir, ordered, counts, name=cfg.output_name)
        drop = removal(ordered, cfg.keep_lowest_n, cfg.remove_n)
        keep = torch.ones(num_examples, dtype=torch.bool)
        keep[torch.as_tensor(drop, dtype=torch.long)] = False
        self.active = active[keep[active]]
        forgetting.reset()
        return int(active.numel() - self.active.numel())

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """Record the batch the step trained on (statistics of the forward pass before the update)."""
        if self.config.data_efficient:
            correct, losses, margins = example_statistics(logits, y)
            self._ready()[0].record(index, correct, losses, margins)

    def select_examples(self, trainer: Trainer, active: torch.Tensor) -> torch.Tensor:
        """Drop the removed examples from `active`, keeping its order."""
        remaining = torch.zeros(len(trainer.data.train_y), dtype=torch.bool)
        remaining[self._ready()[1]] = True
        return active[remaining[active]]

    def state_dict(self) -> dict[str, Any]:
        """The forgetting statistics and the examples still trained on."""
        forgetting, active = self._ready()
        return {"forgetting": forgetting.state_dict(), "active": active.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them (a checkpoint from before the algorithm split stored the same two)."""
        forgetting, _ = self._ready()
        if not isinstance(state, Mapping) or set(state) != {"forgetting", "active"}:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise MestError(f"data efficiency state must have keys ['active', 'forgetting'], got {got}")
        forgetting.load_state_dict(state["forgetting"])
        self.active = torch.as_tensor(state["active"]).clone()


def _enabled(config: DataEfficiencyConfig) -> bool:
    # Removal by an importance file needs no statistics; either one needs the algorithm.
    return config.data_efficient or config.remove_data_epoch is not None


ALGORITHMS.add("data_efficiency", AlgorithmSpec(
    section="data_efficiency", config=DataEfficiencyConfig, factory=DataEfficiency, enabled=_enabled,
    record_defaults={"removed": 0},
))
