"""The always-on FLOPs counter: a hand count of small_cnn on digits, frozen layers, resume, the bundle's whitelist."""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from mest_compile.train.config import TrainConfig
from mest_compile.train.engine import ENGINES, StepEngine
from mest_compile.train.loop import Trainer

CONFIG = dict(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=1, batch_size=256, seed=5)


def _hand_count(trainer: Trainer) -> dict[str, dict[str, int]]:
    # small_cnn on 8x8 digits: conv1 1->16 at 8x8, conv2 16->32 stride 2 at 4x4, conv3 32->32 at
    # 4x4, linear 32->10; every weight element is one multiply-add per output position.
    positions = {"features.conv1": 64, "features.conv2": 16, "features.conv3": 16, "linear": 1}
    n = int(trainer.active.numel())
    counts = {}
    for name, module in trainer.model.named_modules():
        if name in positions:
            used = int(module.mask.sum()) if hasattr(module, "mask") else module.weight.numel()
            flops = 2 * used * positions[name] * n
            counts[name] = {"forward": flops, "weight_grad": flops,
                            "input_grad": 0 if name == "features.conv1" else flops}
    return counts


def test_counted_flops_match_a_hand_count(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    summary = trainer.fit()
    assert summary["training_flops_by_layer"] == _hand_count(trainer)
    assert summary["training_flops"] == sum(sum(c.values()) for c in _hand_count(trainer).values())
    # Dense training of the whole split: conv1 9216, conv2 73728, conv3 147456, linear 320 MACs per example.
    per_example = 3 * (9216 + 73728 + 147456 + 320) - 9216
    assert summary["dense_equivalent_flops"] == 2 * per_example * len(trainer.data.train_y)
    assert trainer.history[0]["training_flops"] == summary["training_flops"]
    assert 0 < summary["flops_fraction"] < 0.5


def test_frozen_layers_count_no_gradients_and_resume_keeps_counting(tmp_path: pathlib.Path) -> None:
    config = TrainConfig(**{**CONFIG, "epochs": 2}, freeze="single-shot", freeze_start_epoch=1, freeze_depth=2,
                         freeze_unit="layer")
    whole = Trainer(config, tmp_path / "whole").fit()
    first = Trainer(config, tmp_path / "split")
    first.fit(stop_after=1)
    resumed = Trainer.resume(tmp_path / "split").fit()
    assert resumed["training_flops_by_layer"] == whole["training_flops_by_layer"]
    by_layer = whole["training_flops_by_layer"]
    # Epoch 1 froze conv1 and conv2: their weight gradients and conv3's input gradient stop.
    assert by_layer["features.conv1"]["weight_grad"] == by_layer["features.conv1"]["forward"] // 2
    assert by_layer["features.conv2"]["weight_grad"] == by_layer["features.conv2"]["forward"] // 2
    assert by_layer["features.conv2"]["input_grad"] == by_layer["features.conv2"]["forward"] // 2
    assert by_layer["features.conv3"]["input_grad"] == by_layer["features.conv3"]["forward"] // 2
    assert by_layer["features.conv3"]["weight_grad"] == by_layer["features.conv3"]["forward"]


def test_evaluation_is_not_counted(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    trainer.evaluate()
    with torch.no_grad():
        trainer.model.eval()
        trainer.model(trainer.data.train_x[:4])
    assert trainer.summary()["training_flops"] == 0


class _Elsewhere(StepEngine):
    """Computes each step on a copy of the model without hooks, as `--engine tvm` computes it in TVM."""

    name = "elsewhere"

    def setup(self, trainer: Trainer) -> None:
        self.copy = copy.deepcopy(trainer.model)
        for module in self.copy.modules():
            module._forward_hooks.clear()

    def step(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor, step: int, last: bool) -> tuple[float, torch.Tensor]:
        logits = self.copy(x)
        F.cross_entropy(logits, y).backward()
        return 0.0, logits.detach()


@pytest.fixture
def elsewhere() -> Iterator[None]:
    ENGINES.add("elsewhere", _Elsewhere)
    try:
        yield
    finally:
        ENGINES.remove("elsewhere")


def test_a_step_without_a_pytorch_forward_is_counted_from_the_masks(elsewhere: None, tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG, engine="elsewhere"), tmp_path)
    summary = trainer.fit()
    assert summary["training_flops_by_layer"] == _hand_count(trainer)
