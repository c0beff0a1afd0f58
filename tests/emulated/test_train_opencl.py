"""`train --compiled --target mali`: a run on the OpenCL kernels (PoCL here) follows the masked-dense run.

Mutation happens every epoch, so the run also proves that the device backends repack and move only
the index buffers a mutation changed.
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from mest_compile.compiler.devices.opencl import Context
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.9, epochs=2, batch_size=128, seed=5, scheme="irregular",
    lower_bound="0.9-0.9-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-4", sp_mask_update_freq=1,
)


@pytest.mark.usefixtures("opencl_context")
def test_training_on_opencl_kernels_follows_masked_dense(tmp_path: pathlib.Path, opencl_context: Context) -> None:
    reference = Trainer(BASE, tmp_path / "dense")
    reference.fit()
    run = Trainer(dataclasses.replace(BASE, compiled=True, target="mali"), tmp_path / "mali")
    summary = run.fit()
    kernels = summary["kernels"]
    assert kernels["target"] == "mali"
    for name, entry in kernels["layers"].items():
        assert entry["status"] == "compiled" and entry["runs_on"] == "opencl", (name, entry)
        stats = entry["backend"]
        assert stats["launches"] > 0 and stats["index_uploads"] > 0
    for ref, got in zip(reference.history, run.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-2), got["epoch"]
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
    assert run.history[1].get("mutation") is not None  # the masks changed under the device kernels
