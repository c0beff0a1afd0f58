"""SpFDE's layer freezing: schedules, units, frozen weights and masks untouched, no optimizer state, refusals."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import torch

from mest_compile.algorithms.layer_freezing import SCHEDULES, freezing_units
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer
from mest_compile.train.models import build_model

CONFIG = dict(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=3, batch_size=256, seed=2,
              lower_bound="0.92", upper_bound="0.9", mask_update_decay_epoch="9", sp_mask_update_freq=1)


@pytest.mark.parametrize(("name", "frozen"), [
    ("progressive", [0, 0, 1, 1, 2, 2, 3, 3]),
    ("single-shot", [0, 0, 3, 3, 3, 3, 3, 3]),
    ("single-shot-resume", [0, 0, 3, 3, 0, 0, 0, 0]),
    ("periodic", [0, 0, 3, 3, 0, 0, 3, 3]),
])
def test_schedules(name: str, frozen: list[int]) -> None:
    assert [SCHEDULES.get(name)(epoch, 2, 2, 3) for epoch in range(8)] == frozen


def test_yaml_sections_and_flat_keys_build_the_same_config(tmp_path: pathlib.Path) -> None:
    nested = tmp_path / "nested.yaml"
    nested.write_text("freezing: {freeze: periodic, freeze_interval: 3}\nsieving: {data_sieving: 0.1}\n"
                      "gradient_correction: {agc: true, agc_gamma: 0.2}\n")
    flat = TrainConfig(freeze="periodic", freeze_interval=3, data_sieving=0.1, agc=True, agc_gamma=0.2)
    assert TrainConfig.load(nested, {}) == flat
    assert flat.freezing.freeze == "periodic" and flat.sieving.data_sieving == 0.1 and flat.gradient_correction.agc


def test_units_are_blocks_or_layers() -> None:
    resnet = freezing_units(build_model("resnet32", num_classes=10, in_channels=3), "block")
    assert len(resnet) == 1 + 15 + 1  # stem conv+bn, 15 residual blocks, the classifier
    assert len(resnet[2]) == 4  # layer1.1: two convs and their batch norms
    assert len(resnet[6]) == 6  # layer2.0 also holds its downsampling conv and bn3
    cnn = freezing_units(build_model("small_cnn", num_classes=10, in_channels=1), "block")
    assert [len(unit) for unit in cnn] == [2, 2, 2, 1]  # conv+bn three times, then the linear layer


def test_frozen_layers_keep_weights_masks_statistics_and_no_optimizer_state(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG, freeze="single-shot", freeze_start_epoch=1, freeze_depth=2), tmp_path)
    trainer.fit(stop_after=1)
    frozen = {n: t.clone() for n, t in trainer.model.state_dict().items()
              if isinstance(t, torch.Tensor) and n.startswith(("features.conv1", "features.bn1", "features.conv2", "features.bn2"))}
    trainer.fit()
    assert trainer.history[-1]["frozen"] == 2 and trainer.history[-1]["mutation"] is not None
    # The mutation ran at every epoch but skipped the frozen layer; the active one still mutates.
    assert list(trainer.history[-1]["mutation"]["layers"]) == ["features.conv3.weight"]
    for name, tensor in trainer.model.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name
    state = trainer.optimizer.state
    for name, param in trainer.model.named_parameters():
        is_frozen = name.startswith(("features.conv1", "features.bn1", "features.conv2", "features.bn2"))
        assert (param not in state or not state[param]) == is_frozen, name
        assert param.requires_grad != is_frozen


def test_resume_equals_uninterrupted(resumed_run: Callable[..., tuple[Trainer, Trainer]]) -> None:
    config = TrainConfig(**CONFIG, freeze="progressive", freeze_start_epoch=1, freeze_interval=1)
    whole, resumed = resumed_run(config, 2, ("train_loss", "test_loss", "frozen", "training_flops"))
    assert [r["frozen"] for r in whole.history] == [0, 1, 2]
    assert _with_state(resumed) == _with_state(whole) == {"features.conv3.weight", "features.bn3.weight",
                                                          "features.bn3.bias", "linear.weight", "linear.bias"}


def _with_state(trainer: Trainer) -> set[str]:
    state = trainer.optimizer.state
    return {name for name, param in trainer.model.named_parameters() if state.get(param)}


def test_unfreezing_trains_again(tmp_path: pathlib.Path) -> None:
    static = {**CONFIG, "lower_bound": None, "upper_bound": None, "mask_update_decay_epoch": None}
    trainer = Trainer(TrainConfig(**static, freeze="single-shot-resume", freeze_start_epoch=1, freeze_interval=1),
                      tmp_path)
    before = trainer.model.features.conv1.weight.detach().clone()
    trainer.fit()
    assert [r["frozen"] for r in trainer.history] == [0, 2, 0]
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert not torch.equal(before, trainer.model.features.conv1.weight)


def test_freezing_every_sparse_layer_while_mutating_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(MestError, match="frozen every sparse layer at epoch 1"):
        Trainer(TrainConfig(**CONFIG, freeze="single-shot", freeze_start_epoch=1, freeze_depth=3), tmp_path)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--freeze", "sometimes"], "'sometimes'"),
    (["--freeze", "progressive", "--freeze-interval", "0"], "freeze_interval"),
    (["--freeze", "single-shot", "--freeze-depth", "4"], "leaves nothing to train"),
    (["--freeze", "single-shot", "--freeze-depth", "3", "--freeze-start-epoch", "0", "--lower-bound", "0.9", "--upper-bound", "0.9",
      "--mask-update-decay-epoch", "3"], "Elastic Mutation"),
])
def test_cli_refusals_are_one_line_exit_2(refused_train: Callable[[list[str], str], None], flags: list[str],
                                          needle: str) -> None:
    refused_train(flags, needle)
