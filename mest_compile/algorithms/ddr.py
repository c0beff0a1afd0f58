"""SparCL's dynamic data removal (DDR): the least-forgotten examples of a task leave, repeatedly.

Forgetting statistics are recorded after every step (from the forward the step trained on). At
epochs `ddr_every`, 2 `ddr_every`, ... (`ddr_events` times) of each task, `ddr_fraction /
ddr_events` of the task's examples leave for the rest of the task: those forgotten least since the
previous removal, ties broken by lowest mean loss (SparCL's code breaks them by argsort's order).
Each task starts with all its examples. Removed examples no longer reach the rehearsal buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.algorithms.continual import task_split
from mest_compile.algorithms.data_sieving import CRITERIA
from mest_compile.algorithms.sparcl import SECTION, SparCLConfig
from mest_compile.errors import MestError
from mest_compile.sparsity.data_efficiency import ForgettingTracker, example_statistics
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.continual.tasks import TaskSplit
    from mest_compile.train.loop import Trainer


class DynamicDataRemoval(TrainingAlgorithm):
    """Repeated forgetting-based removal within each task (module docstring)."""

    def __init__(self, config: SparCLConfig) -> None:
        self.config = config
        self.split: TaskSplit | None = None
        self.tracker: ForgettingTracker | None = None
        self.removed: torch.Tensor | None = None

    def setup(self, trainer: Trainer) -> None:
        """Statistics for every training example; none removed."""
        n = len(trainer.data.train_y)
        self.split = task_split(trainer.config, trainer.data.num_classes)
        self.tracker = ForgettingTracker(n)
        self.removed = torch.zeros(n, dtype=torch.bool)

    def _ready(self) -> tuple[TaskSplit, ForgettingTracker, torch.Tensor]:
        if self.split is None or self.tracker is None or self.removed is None:
            raise MestError("the dynamic data removal algorithm was used before setup(trainer)")
        return self.split, self.tracker, self.removed

    def removes_at(self, epoch: int) -> bool:
        """Whether DDR removes examples at the start of global `epoch`."""
        split, _, _ = self._ready()
        local, every = split.local_epoch(epoch), self.config.ddr_every
        return local > 0 and local % every == 0 and local // every <= self.config.ddr_events

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """A new task restarts the statistics; a removal epoch drops its share of the task."""
        split, tracker, removed = self._ready()
        if split.local_epoch(epoch) == 0:
            tracker.reset()
            return {"ddr_removed": 0}
        if not self.removes_at(epoch):
            return {"ddr_removed": 0}
        members = split.members(trainer.data.train_y, split.task_of(epoch))
        share = round(self.config.ddr_fraction * members.numel() / self.config.ddr_events)
        candidates = members[~removed[members]]
        drop = CRITERIA.get("forgetting")(tracker, candidates)[:share]
        removed[drop] = True
        tracker.reset()
        return {"ddr_removed": int(drop.numel())}

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """Record the batch the step trained on."""
        correct, losses, margins = example_statistics(logits, y)
        self._ready()[1].record(index, correct, losses, margins)

    def select_examples(self, trainer: Trainer, active: torch.Tensor) -> torch.Tensor:
        """Drop the removed examples, keeping the order of `active`."""
        removed = self._ready()[2]
        return active[~removed[active.cpu()].to(active.device)]

    def state_dict(self) -> dict[str, Any]:
        """The statistics since the last removal and which examples are removed."""
        _, tracker, removed = self._ready()
        return {"forgetting": tracker.state_dict(), "removed": removed.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them."""
        _, tracker, _ = self._ready()
        tracker.load_state_dict(state["forgetting"])
        self.removed = torch.as_tensor(state["removed"]).clone()


ALGORITHMS.add("ddr", AlgorithmSpec(
    section=SECTION, config=SparCLConfig, factory=DynamicDataRemoval, enabled=lambda c: c.uses("ddr"),
    record_defaults={"ddr_removed": 0},
))
