"""Training on compiled kernels follows the masked-dense run, mutations included."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

# Elastic Mutation every epoch (EM&S bounds), so masks change under the compiled kernels.
BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.9, epochs=5, batch_size=64, seed=5,
    lower_bound="0.9-0.9-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-4", sp_mask_update_freq=1,
)


# The kernels sum in another order than oneDNN (1e-6 relative per call); training amplifies that
# (ReLU and pooling ties, magnitude thresholds in the mutation), so over five epochs the runs agree
# to a fraction of a percent, not bit for bit.
LOSS_RTOL = 1e-2
TEST_LOSS_RTOL = 5e-2  # 359 test images: a few flipped predictions move it by percents
MASK_AGREEMENT = 0.99


@pytest.mark.parametrize("scheme", ["free_block_prune_column_4", "irregular", "pattern+filter_balance", "channel"])
def test_compiled_training_follows_masked_dense(scheme: str, tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, scheme=scheme)
    reference = Trainer(config, tmp_path / "dense")
    reference.fit()
    compiled = Trainer(dataclasses.replace(config, compiled=True, fallback="never"), tmp_path / "compiled")
    summary = compiled.fit()

    kernels = summary["kernels"]
    assert {entry["status"] for entry in kernels["layers"].values()} == {"compiled"}
    # Masks mutate at every epoch start; the first mutation comes before the first pack.
    assert kernels["repacks"] + kernels["rebuilds"] == (BASE.epochs - 1) * len(kernels["layers"])
    assert kernels["dense_calls"] == 0
    for ref, got in zip(reference.history, compiled.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=LOSS_RTOL), got["epoch"]
        assert got["test_loss"] == pytest.approx(ref["test_loss"], rel=TEST_LOSS_RTOL), got["epoch"]
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
    assert compiled.history[0]["train_loss"] == pytest.approx(reference.history[0]["train_loss"], rel=1e-5)
    for name, layer in compiled.layers.items():
        agreement = float((layer.mask == reference.layers[name].mask).float().mean())
        assert agreement >= MASK_AGREEMENT, (name, agreement)


def test_compiled_run_resumes(tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, scheme="free_block_prune_column_4", epochs=2, compiled=True)
    Trainer(config, tmp_path).fit(stop_after=1)
    resumed = Trainer.resume(tmp_path)
    summary = resumed.fit()
    assert summary["kernels"] is not None and len(resumed.history) == 2


def test_compiling_does_not_change_the_run(tmp_path: pathlib.Path) -> None:
    """Same seed, compiled or not: the same run (the kernels' math is the masked dense conv's).

    Compiling (gate, timing, packing) must draw nothing from the global generator the run is
    seeded with, and a mutation after an epoch on the kernels must pick the same masks.
    """
    config = dataclasses.replace(BASE, scheme="block", epochs=2)
    dense = Trainer(config, tmp_path / "dense")
    seeded = torch.get_rng_state()
    compiled = Trainer(dataclasses.replace(config, compiled=True, fallback="never"), tmp_path / "compiled")
    assert torch.equal(torch.get_rng_state(), seeded)
    dense.fit()
    summary = compiled.fit()

    assert {entry["status"] for entry in summary["kernels"]["layers"].values()} == {"compiled"}
    for ref, got in zip(dense.history, compiled.history, strict=True):
        for key in ("train_loss", "test_loss"):
            assert got[key] == pytest.approx(ref[key], rel=1e-4), (key, got["epoch"])
        assert got["mutation"] == ref["mutation"]
    for name, layer in compiled.layers.items():
        assert torch.equal(layer.mask, dense.layers[name].mask), name
