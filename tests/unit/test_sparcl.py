"""SparCL's parts: DGM keeps the top gradients inside the mask, its FLOPs, TDM and DDR per task."""

from __future__ import annotations

import pathlib
from types import SimpleNamespace

import pytest
import torch

from mest_compile.algorithms.dgm import DynamicGradientMasking, top_gradients
from mest_compile.algorithms.sparcl import SparCLConfig
from mest_compile.algorithms.training_flops import weight_grad_entries
from mest_compile.sparsity.module import SparseConv2d
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer


def test_top_gradients_are_the_largest_inside_the_mask() -> None:
    grad = torch.tensor([9.0, -5.0, 0.5, -3.0, 2.0, 1.0])
    mask = torch.tensor([False, True, True, True, True, False])
    assert top_gradients(grad, mask, 0.5).tolist() == [False, True, False, True, False, False]


def test_dgm_applies_only_the_refreshed_top_gradients() -> None:
    layer = SparseConv2d(2, 2, 3, bias=False)
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    layer.set_mask_(mask)
    dgm = DynamicGradientMasking(SparCLConfig(dgm=True, dgm_keep=0.25, dgm_every=3))
    dgm.setup(SimpleNamespace(layers={"conv": layer}))
    grads = [torch.randn(layer.weight.shape) for _ in range(3)]
    kept = []
    for step, grad in enumerate(grads):
        dgm.before_step(None, step, torch.arange(1))
        layer.weight.grad = grad.clone()
        dgm.after_backward(None, step, False)
        kept.append(layer.weight.grad != 0)
    top = top_gradients(grads[0] * mask, mask, 0.25)
    assert int(top.sum()) == round(0.25 * int(mask.sum())) and not (top & ~mask).any()
    assert torch.equal(kept[0], top)
    # Batches 1 and 2 use batch 0's mask; their own largest gradients do not matter.
    assert torch.equal(kept[1], top) and torch.equal(kept[2], top)
    assert weight_grad_entries(layer) == int(top.sum())
    dgm.before_step(None, 3, torch.arange(1))  # a refresh batch computes the whole masked gradient
    assert weight_grad_entries(layer) == int(mask.sum())


@pytest.fixture(scope="module")
def sparcl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, dict]:
    config = TrainConfig(dataset="digits", sparsity=0.9, epochs=6, batch_size=128, seed=2, continual="split-digits",
                         tasks=2, replay="derpp", buffer_size=60, sparcl=True, tdm_every=1, tdm_until=0.5,
                         ddr_every=1, ddr_events=2, ddr_fraction=0.2, dgm_keep=0.5, lr_scheduler="constant",
                         momentum=0.0, weight_decay=0.0)
    trainer = Trainer(config, tmp_path_factory.mktemp("sparcl"))
    return trainer, trainer.fit()


def test_tdm_mutates_at_the_start_of_every_task_and_keeps_the_sparsity(sparcl_run: tuple[Trainer, dict]) -> None:
    trainer, summary = sparcl_run
    # 3 epochs per task, updates every epoch before half of the task: local epochs 0 and 1.
    assert [r["tdm_update"] for r in trainer.history] == [True, True, False] * 2
    assert summary["tdm_updates"] == 4
    assert all(abs(r["sparsity"] - 0.9) < 0.002 for r in trainer.history)


def test_ddr_removes_shares_of_each_task_and_restarts_with_the_next(sparcl_run: tuple[Trainer, dict]) -> None:
    trainer, _ = sparcl_run
    labels = trainer.data.train_y
    sizes = [int((labels < 5).sum()), int((labels >= 5).sum())]
    share = [round(0.2 * n / 2) for n in sizes]
    assert [r["ddr_removed"] for r in trainer.history] == [0, share[0], share[0], 0, share[1], share[1]]
    assert [r["n_train"] for r in trainer.history] == [sizes[0], sizes[0] - share[0], sizes[0] - 2 * share[0],
                                                      sizes[1], sizes[1] - share[1], sizes[1] - 2 * share[1]]


def test_sparcl_counts_fewer_flops_than_dense_derpp(sparcl_run: tuple[Trainer, dict], tmp_path: pathlib.Path) -> None:
    trainer, summary = sparcl_run
    dense = Trainer(TrainConfig.from_dict({**trainer.config.to_dict()["data"], "sparsity": 0.0, "epochs": 6,
                                           "batch_size": 128, "seed": 2, "continual": "split-digits", "tasks": 2,
                                           "replay": "derpp", "buffer_size": 60}), tmp_path).fit()
    by_layer = summary["training_flops_by_layer"]["features.conv3"]
    assert by_layer["weight_grad"] < by_layer["forward"]  # DGM's mask narrows the weight gradient
    assert summary["training_flops"] < dense["training_flops"] / 4
