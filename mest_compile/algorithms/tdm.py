"""SparCL's task-aware dynamic masking (TDM): Elastic Mutation restarted with every task.

At epochs 0, `tdm_every`, 2 `tdm_every`, ... of each task, before `tdm_until` of it, every sparse
layer prunes `tdm_swap` beyond the run's sparsity by importance `|w| + lambda |g|` and grows as
many back at random (zero-initialised). `g` is the gradient of the previous epoch's last batch,
so the buffer's loss and DGM's mask are in it, and at a task's first epoch it is the previous
task's last gradient (SparCL's code). The masks stay fixed for the rest of the task. MEST's own
mutation (`--lower-bound`) is the non-task-aware alternative; a run uses one of the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mest_compile.algorithms.continual import task_split
from mest_compile.algorithms.sparcl import SECTION, SparCLConfig
from mest_compile.errors import MestError
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.mutation import ElasticMutation, MutationConfig
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.continual.tasks import TaskSplit
    from mest_compile.train.loop import Trainer

# Its growth generator apart from MEST's mutation's.
TDM_SEED_OFFSET = 104729
# A single stage: no decay epoch is ever reached.
NEVER = 10**9


class TaskAwareMasking(TrainingAlgorithm):
    """Per-task Elastic Mutation with a gradient-aware importance (module docstring)."""

    def __init__(self, config: SparCLConfig) -> None:
        self.config = config
        self.mutation: ElasticMutation | None = None
        self.split: TaskSplit | None = None

    def setup(self, trainer: Trainer) -> None:
        """An Elastic Mutation that prunes to sparsity + swap and grows to sparsity whenever asked."""
        if trainer.config.lower_bound is not None:
            raise MestError("--tdm restarts its own mutation every task; drop --lower-bound/--upper-bound")
        self.split = task_split(trainer.config, trainer.data.num_classes)
        sparsity = trainer.config.sparse.sparsity
        if sparsity == 0:  # dense: nothing to mutate
            return
        lower = min(1.0, sparsity + self.config.tdm_swap)
        self.mutation = ElasticMutation(trainer.layers, MutationConfig(
            schedule=BoundSchedule(lower=(lower,), upper=(sparsity,), decay_epochs=(NEVER,), update_freq=1),
            score="magnitude+grad", sp_lmd=self.config.tdm_lambda, compat=trainer.compat,
            seed=trainer.config.run.seed + TDM_SEED_OFFSET), optimizer=trainer.optimizer)

    def updates_at(self, epoch: int) -> bool:
        """Whether TDM mutates at global `epoch`."""
        if self.split is None:
            return False
        local = self.split.local_epoch(epoch)
        return local % self.config.tdm_every == 0 and local < self.config.tdm_until * self.split.epochs_per_task

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Mutate at the task's update epochs; the record's `tdm_update` says whether it did."""
        if self.mutation is None or not self.updates_at(epoch):
            return {"tdm_update": False}
        report = self.mutation.step(epoch)
        if report is not None:
            trainer.masks_updated(epoch, tuple(report.layers))
        return {"tdm_update": report is not None}

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """Keep the epoch's last gradient (current and buffer losses, DGM-masked) for the next update."""
        if last and self.mutation is not None:
            self.mutation.observe_gradients()

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """How many times TDM mutated the masks."""
        return {"tdm_updates": self.mutation.updates if self.mutation is not None else 0}

    def state_dict(self) -> dict[str, Any]:
        """The mutation's generator, last gradients and counters."""
        return self.mutation.state_dict() if self.mutation is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them."""
        if self.mutation is not None:
            self.mutation.load_state_dict(state)


ALGORITHMS.add("tdm", AlgorithmSpec(
    section=SECTION, config=SparCLConfig, factory=TaskAwareMasking, enabled=lambda c: c.uses("tdm"),
    record_defaults={"tdm_update": False}, summary_defaults={"tdm_updates": 0},
))
