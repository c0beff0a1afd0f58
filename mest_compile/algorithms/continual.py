"""Class-incremental continual learning as a training algorithm: one task of classes at a time.

The run's epochs are split equally among the tasks of a benchmark (`--continual split-digits
--tasks 5`); during a task only its examples are trained on (the algorithm narrows the trainer's
examples, as data removal does), the optimizer's state restarts with each task (SparCL creates
a new optimizer per task), and after a task's last epoch every task's test examples are
evaluated, Class-IL (argmax over all classes) and Task-IL (argmax over the task's own classes):
one row of the accuracy matrix. Rehearsal and SparCL's parts are separate algorithms that read
the same task split (`task_split`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.algorithms.distributed import world_size
from mest_compile.errors import MestError
from mest_compile.train.continual.metrics import average, forgetting, task_accuracies
from mest_compile.train.continual.plot import plot_accuracy_matrix
from mest_compile.train.continual.tasks import BENCHMARKS, TaskSplit
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import DataConfig, setting

if TYPE_CHECKING:
    from mest_compile.train.config import TrainConfig
    from mest_compile.train.loop import Trainer


@dataclass(frozen=True)
class ContinualConfig:
    """Which benchmark and how many tasks (the `continual_learning` section)."""

    continual: str | None = setting(None, "continual benchmark: split-digits | split-cifar10 | split-cifar100 "
                                          "(off when empty); --epochs are shared equally by the tasks")
    # None: the benchmark's own count (5 for digits and CIFAR-10, 10 for CIFAR-100, as in SparCL).
    tasks: int | None = setting(None, "number of tasks, each an equal share of the classes")
    # Off is plain class-incremental DER++; SparCL's script turns it on (--use_cl_mask).
    cl_mask: bool = setting(False, "the current batch's cross-entropy over its own task's classes only (SparCL's "
                                   "cl_mask); rehearsal losses still span every class")

    def __post_init__(self) -> None:
        if self.continual is not None:
            BENCHMARKS.get(self.continual)  # an unknown name fails here, listing the known ones
        if self.tasks is not None and (isinstance(self.tasks, bool) or self.tasks < 1):
            raise MestError(f"tasks must be a positive integer, got {self.tasks!r}")


def task_split(config: TrainConfig, num_classes: int) -> TaskSplit:
    """The run's tasks; a run that is not continual is one task of every class."""
    section = config.section("continual_learning")
    if section.continual is None:
        return TaskSplit(num_classes, 1, config.optim.epochs)
    return TaskSplit(num_classes, section.tasks or BENCHMARKS.get(section.continual).tasks, config.optim.epochs)


def with_benchmark_dataset(config: TrainConfig) -> TrainConfig:
    """`config` reading its benchmark's dataset when it names none but the default (the CLI's boundary)."""
    if config.continual is None or config.dataset != DataConfig().dataset:
        return config
    return dataclasses.replace(config, dataset=BENCHMARKS.get(config.continual).dataset)


class Continual(TrainingAlgorithm):
    """Tasks in turn, the accuracy matrix after each (module docstring)."""

    def __init__(self, config: ContinualConfig) -> None:
        self.config = config
        self.split: TaskSplit | None = None
        self.task = 0
        self.class_il: list[list[float]] = []
        self.task_il: list[list[float]] = []

    def setup(self, trainer: Trainer) -> None:
        """Check the dataset is the benchmark's and build the split (refusing impossible task counts)."""
        name = trainer.config.continual
        if world_size() > 1:
            # Each rank would fill its own rehearsal buffer from its part of the batches, and the
            # buffer's gradients would be added after the ranks averaged theirs: the ranks drift apart.
            raise MestError(f"--continual trains in one process; this run has {world_size()} ranks (torchrun): "
                            "launch it without torchrun")
        dataset = BENCHMARKS.get(name).dataset
        if trainer.data.name != dataset:
            raise MestError(f"--continual {name} splits the {dataset} dataset, not {trainer.data.name}")
        self.split = task_split(trainer.config, trainer.data.num_classes)
        empty = [t for t in range(self.split.tasks) if not self.split.members(trainer.data.train_y, t).numel()]
        if empty:
            raise MestError(f"task {empty[0]} of --continual {name} has no training examples")

    def _split(self) -> TaskSplit:
        if self.split is None:
            raise MestError("the continual algorithm was used before setup(trainer)")
        return self.split

    def on_fit_start(self, trainer: Trainer) -> None:
        """The task the next epoch trains (a resumed run may start in the middle of one)."""
        self.task = self._split().task_of(trainer.start_epoch)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Enter the epoch's task; a new task starts with a fresh optimizer state."""
        split = self._split()
        self.task = split.task_of(epoch)
        if split.local_epoch(epoch) == 0 and self.task > 0:
            trainer.optimizer.state.clear()
        return {"task": self.task}

    def training_logits(self, trainer: Trainer, logits: torch.Tensor) -> torch.Tensor:
        """With `cl_mask`, other tasks' classes get -inf: the current batch cannot push old classes down."""
        if not self.config.cl_mask:
            return logits
        outside = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        outside[self._split().classes(self.task)] = False
        return logits.masked_fill(outside, float("-inf"))

    def select_examples(self, trainer: Trainer, active: torch.Tensor) -> torch.Tensor:
        """Only the current task's examples, in the order of `active`."""
        tasks = self._split().task_of_labels(trainer.data.train_y.cpu())
        return active[tasks[active] == self.task]

    @torch.no_grad()
    def evaluate_tasks(self, trainer: Trainer) -> tuple[list[float], list[float]]:
        """Class-IL and Task-IL accuracy on every task's test examples (eval mode: not counted as training)."""
        model, training = trainer.model, trainer.model.training
        model.eval()
        try:
            batch = trainer.config.optim.test_batch_size
            logits = torch.cat([model(x) for x in trainer.data.test_x.split(batch)])
        finally:
            model.train(training)
        return task_accuracies(logits.cpu(), trainer.data.test_y.cpu(), self._split())

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After a task's last epoch: its row of the accuracy matrix, and the averages so far."""
        if not self._split().is_last_epoch(record["epoch"]):
            return
        class_il, task_il = self.evaluate_tasks(trainer)
        self.class_il.append(class_il)
        self.task_il.append(task_il)
        record.update(accuracy_row=class_il, task_il_row=task_il, class_il_accuracy=average(self.class_il),
                      task_il_accuracy=average(self.task_il))

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """Average Class-IL and Task-IL accuracy after the last task trained, both matrices, forgetting."""
        if not self.class_il:
            return {}
        return {"continual": trainer.config.continual, "tasks": self._split().tasks,
                "class_il_accuracy": average(self.class_il), "task_il_accuracy": average(self.task_il),
                "accuracy_matrix": self.class_il, "task_il_matrix": self.task_il,
                "forgetting": forgetting(self.class_il), "task_il_forgetting": forgetting(self.task_il)}

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """The accuracy matrix as a PNG beside the summary."""
        if self.class_il:
            plot_accuracy_matrix(trainer.run_dir, self.class_il, self.task_il)

    def state_dict(self) -> dict[str, Any]:
        """The matrix rows so far (the task follows from the epoch)."""
        return {"class_il": [list(r) for r in self.class_il], "task_il": [list(r) for r in self.task_il]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the rows."""
        self.class_il = [list(r) for r in state["class_il"]]
        self.task_il = [list(r) for r in state["task_il"]]


ALGORITHMS.add("continual", AlgorithmSpec(
    section="continual_learning", config=ContinualConfig, factory=Continual, enabled=lambda c: c.continual is not None,
    record_defaults={"task": None, "accuracy_row": None, "task_il_row": None, "class_il_accuracy": None,
                     "task_il_accuracy": None},
    summary_defaults={"continual": None, "tasks": None, "class_il_accuracy": None, "task_il_accuracy": None,
                      "accuracy_matrix": None, "task_il_matrix": None, "forgetting": None,
                      "task_il_forgetting": None},
))
