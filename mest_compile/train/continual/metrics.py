"""The accuracy matrix of a continual run and what is read off it: average accuracy, forgetting.

Row i holds the accuracy on every task after training task i (future tasks included, where a
class-incremental model is near zero); `average(i)` is the mean over the tasks seen by then
(Mammoth's "average accuracy"); forgetting is, per earlier task, the best accuracy it ever had
minus its final one, averaged (Chaudhry et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mest_compile.train.continual.tasks import TaskSplit


def average(matrix: Sequence[Sequence[float]], row: int = -1) -> float:
    """Mean accuracy over the tasks seen after row `row` (the last by default)."""
    rows = list(matrix)
    index = row % len(rows)
    seen = rows[index][: index + 1]
    return sum(seen) / len(seen)


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over all tasks but the last seen of (best earlier accuracy - final accuracy); 0 for one task."""
    rows = list(matrix)
    last = len(rows) - 1
    if last < 1:
        return 0.0
    drops = [max(rows[i][task] for i in range(task, last)) - rows[last][task] for task in range(last)]
    return sum(drops) / len(drops)


@torch.no_grad()
def task_accuracies(logits: torch.Tensor, labels: torch.Tensor, split: TaskSplit) -> tuple[list[float], list[float]]:
    """Class-IL and Task-IL accuracy of `logits` on each task's examples.

    Class-IL takes the argmax over every class; Task-IL only over the example's own task's classes
    (the task is given at test time).
    """
    class_il, task_il = [], []
    tasks = split.task_of_labels(labels)
    c = split.classes_per_task
    for task in range(split.tasks):
        members = tasks == task
        if not bool(members.any()):
            class_il.append(0.0)
            task_il.append(0.0)
            continue
        scores, y = logits[members], labels[members]
        class_il.append(float((scores.argmax(1) == y).float().mean()))
        own = scores[:, task * c:(task + 1) * c].argmax(1) + task * c
        task_il.append(float((own == y).float().mean()))
    return class_il, task_il
