"""The accuracy matrix as a PNG: rows are "after task i", columns the task evaluated."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from mest_compile.train.report import save_png

PLOT = "accuracy_matrix.png"


def plot_accuracy_matrix(run_dir: pathlib.Path, class_il: Sequence[Sequence[float]],
                         task_il: Sequence[Sequence[float]]) -> pathlib.Path:
    """Class-IL and Task-IL accuracy matrices side by side, each cell labelled in percent."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    tasks = len(class_il[0])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * tasks, 0.6 * tasks + 2.5))
    for ax, matrix, title in zip(axes, (class_il, task_il), ("Class-IL", "Task-IL")):
        ax.imshow([[100 * v for v in row] for row in matrix], vmin=0, vmax=100, cmap="viridis")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 else "black")
        ax.set_title(f"{title} accuracy (%)")
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("after training task")
        ax.set_xticks(range(tasks))
        ax.set_yticks(range(len(matrix)))
    return save_png(fig, run_dir / PLOT)
