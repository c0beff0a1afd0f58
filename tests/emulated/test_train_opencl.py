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
from mest_compile.train.report import format_summary

# Two short epochs of digits (about 10 s on PoCL), Elastic Mutation at the start of each.
BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.9, epochs=2, batch_size=128, seed=5, scheme="irregular",
    lower_bound="0.9-0.9-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-4", sp_mask_update_freq=1,
)


def _index_uploads(trainer: Trainer) -> dict[str, int]:
    return {name: layer.backend.stats.index_uploads for name, layer in trainer.layers.items()}


@pytest.mark.usefixtures("opencl_context")
def test_training_on_opencl_kernels_follows_masked_dense(tmp_path: pathlib.Path, opencl_context: Context) -> None:
    reference = Trainer(BASE, tmp_path / "dense")
    reference.fit()
    run = Trainer(dataclasses.replace(BASE, compiled=True, target="mali"), tmp_path / "mali")
    run.fit(stop_after=1)
    before_mutation = _index_uploads(run)
    summary = run.fit()  # the second epoch starts with a mutation

    assert run.history[1].get("mutation") is not None  # the masks changed under the device kernels
    after = _index_uploads(run)
    assert all(after[name] > before_mutation[name] for name in after), (before_mutation, after)
    kernels = summary["kernels"]
    assert kernels["target"] == "mali"
    for name, entry in kernels["layers"].items():
        assert entry["status"] == "compiled" and entry["runs_on"] == "opencl", (name, entry)
        assert entry["backend"]["launches"] > 0
    assert kernels["launches"] == sum(entry["backend"]["launches"] for entry in kernels["layers"].values())
    assert kernels["dense_calls"] == 0 and "launches" in format_summary(summary)
    for ref, got in zip(reference.history, run.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-2), got["epoch"]
        assert got["test_loss"] == pytest.approx(ref["test_loss"], rel=5e-2), got["epoch"]
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
    # 359 test images: a handful of flipped predictions at most.
    assert summary["final_test_acc"] == pytest.approx(reference.history[-1]["test_acc"], abs=0.02)
