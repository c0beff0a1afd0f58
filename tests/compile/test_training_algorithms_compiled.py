"""SpFDE, AGC and SparCL's gradient masking on compiled kernels: frozen layers skip their gradient kernels;
AGC and DGM follow their masked-dense runs, DGM on narrowed weight-gradient kernels."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import pytest

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


def test_agc_on_compiled_kernels_follows_masked_dense(tmp_path: pathlib.Path) -> None:
    config = TrainConfig(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=2,
                         batch_size=256, seed=3, agc=True)
    reference = Trainer(config, tmp_path / "dense").fit()
    compiled = Trainer(dataclasses.replace(config, compiled=True, fallback="never"), tmp_path / "compiled").fit()
    assert {entry["status"] for entry in compiled["kernels"]["layers"].values()} == {"compiled"}
    # The same passes are counted; the kernels sum in another order, so tau and accuracy agree closely.
    assert compiled["training_flops"] == reference["training_flops"]
    assert compiled["agc_tau"] == pytest.approx(reference["agc_tau"], rel=1e-3)
    assert abs(compiled["final_test_acc"] - reference["final_test_acc"]) <= 0.02


def test_dgm_narrows_the_compiled_weight_gradient_and_follows_masked_dense(tmp_path: pathlib.Path) -> None:
    # SparCL's gradient masking alone, on split-digits: between refreshes the wgrad kernels run on
    # the packed gradient masks (irregular: exactly them), and the run follows its masked-dense twin.
    config = TrainConfig(dataset="digits", model="small_cnn", sparsity=0.9, epochs=2, batch_size=128, seed=2,
                         continual="split-digits", tasks=2, replay="derpp", buffer_size=60, dgm=True,
                         dgm_keep=0.5, dgm_every=3, lr_scheduler="constant", momentum=0.0, weight_decay=0.0)
    reference = Trainer(config, tmp_path / "dense").fit()
    compiled = Trainer(dataclasses.replace(config, compiled=True, fallback="never"), tmp_path / "compiled").fit()
    layers = compiled["kernels"]["layers"]
    assert {entry["status"] for entry in layers.values()} == {"compiled"}
    for entry in layers.values():
        # Refreshes every 3 batches (and at each epoch start) repack the new masks.
        assert entry["backend"]["grad_packs"] >= 2 and entry["backend"]["narrowed_calls"] > 0
    assert compiled["training_flops"] == reference["training_flops"]
    assert abs(compiled["class_il_accuracy"] - reference["class_il_accuracy"]) <= 0.03
