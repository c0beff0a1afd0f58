"""Continual-learning runs: task splits, the accuracy matrix and forgetting, the summary, refusals."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest
import torch

from mest_compile.train.config import TrainConfig
from mest_compile.train.continual.metrics import average, forgetting, task_accuracies
from mest_compile.train.continual.tasks import TaskSplit
from mest_compile.train.loop import Trainer

CONFIG = dict(dataset="digits", model="small_cnn", sparsity=0.9, epochs=4, batch_size=128, seed=3,
              continual="split-digits", tasks=2, lr_scheduler="constant", momentum=0.0, weight_decay=0.0, lr=0.03)


def test_split_maps_classes_and_epochs_to_tasks() -> None:
    split = TaskSplit(num_classes=10, tasks=5, epochs=15)
    assert [split.classes(t) for t in range(5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [split.task_of(e) for e in range(15)] == [t for t in range(5) for _ in range(3)]
    assert [split.local_epoch(e) for e in range(6)] == [0, 1, 2, 0, 1, 2]
    assert split.members(torch.tensor([3, 0, 2, 9, 2]), 1).tolist() == [0, 2, 4]


def test_each_task_trains_only_its_classes(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    seen: list[set[int]] = []
    for epoch in range(4):
        trainer.algorithms["continual"].on_epoch_start(trainer, epoch)
        seen.append(set(trainer.data.train_y[trainer.active].tolist()))
    assert seen == [{0, 1, 2, 3, 4}] * 2 + [{5, 6, 7, 8, 9}] * 2
    assert int(trainer.active.numel()) == int((trainer.data.train_y >= 5).sum())


def test_average_and_forgetting_on_hand_data() -> None:
    matrix = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.6, 0.4, 0.7]]
    assert average(matrix) == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    assert average(matrix, 1) == pytest.approx((0.5 + 0.8) / 2)
    # Task 0: best 0.9, final 0.6; task 1: best 0.8, final 0.4.
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.4)) / 2)
    assert forgetting([[0.9]]) == 0.0


def test_class_il_and_task_il_accuracy_on_hand_logits() -> None:
    split = TaskSplit(num_classes=4, tasks=2, epochs=2)
    labels = torch.tensor([0, 1, 2, 3])
    # Example 1 (class 1) scores class 3 highest: wrong in Class-IL, right in Task-IL (task 0: classes 0, 1).
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 2.0, 0, 9.0], [0, 0, 1.0, 0], [0, 0, 3.0, 1.0]])
    class_il, task_il = task_accuracies(logits, labels, split)
    assert class_il == [0.5, 0.5] and task_il == [1.0, 0.5]


def test_summary_metrics_and_plot(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG, replay="derpp", buffer_size=50), tmp_path)
    summary = trainer.fit()
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert summary["class_il_accuracy"] == pytest.approx(sum(matrix[1]) / 2)
    assert summary["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    assert 0 <= summary["class_il_accuracy"] <= summary["task_il_accuracy"] <= 1
    assert summary["training_flops"] > 0 and summary["buffer"] == {"method": "derpp", "size": 50, "seen": 2 * len(trainer.data.train_y)}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == [0, 0, 1, 1]
    assert [r["class_il_accuracy"] is not None for r in rows] == [False, True, False, True]
    assert rows[3]["accuracy_row"] == matrix[1]
    assert (tmp_path / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flags, needle", [
    (["--continual", "split-mnist"], "split-mnist"),
    (["--continual", "split-digits", "--tasks", "20"], "--tasks 20"),
    (["--continual", "split-digits", "--tasks", "3"], "--tasks 3"),
    (["--replay", "derpp", "--buffer-size", "100000"], "--buffer-size 100000"),
    (["--replay", "agem"], "agem"),
])
def test_bad_input_is_refused(refused_train: Callable[[list[str], str], None], flags: list[str], needle: str) -> None:
    refused_train(flags, needle)


def test_cl_mask_hides_other_tasks_classes_from_the_current_loss(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG, cl_mask=True), tmp_path)
    trainer.algorithms["continual"].on_epoch_start(trainer, 2)  # task 1: classes 5..9
    logits = torch.randn(3, 10, requires_grad=True)
    y = torch.tensor([5, 7, 9])
    loss = trainer.training_loss(logits, y)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[:, 5:], y - 5))
    loss.backward()
    assert not logits.grad[:, :5].any()


def test_split_cifar10_reads_cifar10_from_the_data_dir(tmp_path: pathlib.Path) -> None:
    import importlib.util

    from click.testing import CliRunner

    from mest_compile.cli import cli

    # The tiny CIFAR tree of the dataset tests (tests are not a package: load the module by path).
    spec = importlib.util.spec_from_file_location("cifar_tree", pathlib.Path(__file__).with_name("test_datasets.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_cifar(tmp_path / "data", hundred=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--continual", "split-cifar10", "--tasks", "2", "--epochs", "2",
                                      "--replay", "derpp", "--buffer-size", "8", "--data-dir", str(tmp_path / "data"),
                                      "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["tasks"] == 2
    assert len(summary["accuracy_matrix"]) == 2 and all(len(row) == 2 for row in summary["accuracy_matrix"])


def test_a_data_parallel_continual_run_is_refused(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mest_compile.errors import MestError

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the refusal comes before any process group
    with pytest.raises(MestError, match="--continual trains in one process"):
        Trainer(TrainConfig(**CONFIG), tmp_path)
