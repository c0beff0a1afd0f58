"""Benchmarks as class splits: which classes each task holds and which epochs belong to it.

A benchmark (`split-digits`, `split-cifar10`, `split-cifar100`) names a dataset and its usual
number of tasks; task t holds the classes `[t*c, (t+1)*c)` in label order, c = classes / tasks,
as Mammoth's sequential datasets (and SparCL's) split them. The run's `--epochs` are shared
equally by the tasks (SparCL's `epochs / N_TASKS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mest_compile.errors import MestError
from mest_compile.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    """A continual benchmark: the dataset it splits and its default number of tasks."""

    dataset: str
    tasks: int


BENCHMARKS: Registry[Benchmark] = Registry("continual benchmark")
BENCHMARKS.add("split-digits", Benchmark("digits", 5))
BENCHMARKS.add("split-cifar10", Benchmark("cifar10", 5))
BENCHMARKS.add("split-cifar100", Benchmark("cifar100", 10))


@dataclass(frozen=True)
class TaskSplit:
    """`tasks` tasks over `num_classes` classes and `epochs` epochs, each task an equal share of both.

    Example:
        >>> split = TaskSplit(num_classes=10, tasks=5, epochs=10)
        >>> split.classes(1), split.task_of(3), split.local_epoch(3), split.is_last_epoch(3)
        ([2, 3], 1, 1, True)
    """

    num_classes: int
    tasks: int
    epochs: int

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.tasks > self.num_classes or self.num_classes % self.tasks:
            raise MestError(f"--tasks {self.tasks} does not split {self.num_classes} classes into equal tasks "
                            f"(use a divisor of {self.num_classes}, at most {self.num_classes})")
        if self.epochs % self.tasks:
            raise MestError(f"--epochs {self.epochs} is not a multiple of --tasks {self.tasks} "
                            "(every task trains epochs / tasks epochs)")

    @property
    def classes_per_task(self) -> int:
        """Classes in each task."""
        return self.num_classes // self.tasks

    @property
    def epochs_per_task(self) -> int:
        """Epochs each task trains."""
        return self.epochs // self.tasks

    def classes(self, task: int) -> list[int]:
        """The labels task `task` holds."""
        c = self.classes_per_task
        return list(range(task * c, (task + 1) * c))

    def task_of(self, epoch: int) -> int:
        """The task global `epoch` trains."""
        return min(epoch // self.epochs_per_task, self.tasks - 1)

    def local_epoch(self, epoch: int) -> int:
        """`epoch` counted from the start of its task."""
        return epoch - self.task_of(epoch) * self.epochs_per_task

    def is_last_epoch(self, epoch: int) -> bool:
        """Whether `epoch` is the last one of its task (the task is evaluated after it)."""
        return self.local_epoch(epoch) == self.epochs_per_task - 1

    def task_of_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The task of each label."""
        return labels // self.classes_per_task

    def members(self, labels: torch.Tensor, task: int) -> torch.Tensor:
        """Indices (ascending) of the examples of `labels` that belong to `task`."""
        return torch.nonzero(self.task_of_labels(labels.cpu()) == task).squeeze(1)
