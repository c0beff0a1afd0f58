"""Frozen layers on compiled kernels: no weight-gradient kernel for them, no input-gradient kernel below the first trainable layer."""

from __future__ import annotations

import math
import pathlib

import torch

from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer


def test_frozen_layers_skip_their_gradient_kernels(tmp_path: pathlib.Path) -> None:
    # small_cnn's conv1 stays dense; conv2 and conv3 run compiled. From epoch 1 conv1 and conv2
    # (with their batch norms) are frozen: conv2 needs no kernel of its backward, conv3 no dgrad.
    config = TrainConfig(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=2,
                         batch_size=256, seed=3, compiled=True, fallback="never", freeze="single-shot",
                         freeze_start_epoch=1, freeze_depth=2, freeze_unit="layer")
    trainer = Trainer(config, tmp_path)
    trainer.fit(stop_after=1)
    frozen = trainer.model.features.conv2.weight.detach().clone()
    summary = trainer.fit()
    steps = math.ceil(len(trainer.active) / config.batch_size)
    layers = summary["kernels"]["layers"]
    assert {entry["status"] for entry in layers.values()} == {"compiled"}
    conv2, conv3 = layers["features.conv2.weight"]["backend"], layers["features.conv3.weight"]["backend"]
    assert (conv2["wgrad_skipped"], conv2["dgrad_skipped"]) == (steps, steps)
    assert (conv3["wgrad_skipped"], conv3["dgrad_skipped"]) == (0, steps)
    assert summary["kernels"]["wgrad_skipped"] == steps and summary["kernels"]["dgrad_skipped"] == 2 * steps
    assert torch.equal(trainer.model.features.conv2.weight, frozen)
