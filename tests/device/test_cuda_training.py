"""`train --compiled --target cuda`: a digits run with Elastic Mutation on the GPU kernels follows the host run."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from mest_compile.train import checkpoint
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

# Two epochs of digits with a mutation at the start of each; irregular: the simplest format.
BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.9, epochs=2, batch_size=64, seed=5, scheme="irregular",
    lower_bound="0.9-0.9-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-4", sp_mask_update_freq=1,
)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA (the CPU build)")
def test_training_on_the_gpu_follows_the_host_run(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # cuDNN's TF32 convs (on by default from Ampere) round to 10 bits; the host run is float32 throughout.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    reference = Trainer(BASE, tmp_path / "host")
    reference.fit()
    run = Trainer(dataclasses.replace(BASE, compiled=True, target="cuda"), tmp_path / "cuda")
    summary = run.fit()

    assert next(run.model.parameters()).device.type == "cuda"
    for name, entry in summary["kernels"]["layers"].items():
        assert entry["status"] == "compiled" and entry["runs_on"] == "cuda", (name, entry)
        assert entry["backend"]["launches"] > 0
    assert run.history[1]["mutation"] is not None  # the masks changed under the GPU kernels
    for ref, got in zip(reference.history, run.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=2e-2), got["epoch"]
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
    assert summary["final_test_acc"] == pytest.approx(reference.history[-1]["test_acc"], abs=0.03)

    # The checkpoint holds CPU tensors (a CPU machine reads it) and a GPU run resumes from it.
    state = torch.load(checkpoint.checkpoint_path(tmp_path / "cuda"), weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    resumed = Trainer.resume(tmp_path / "cuda", epochs=3)
    resumed.fit()
    assert len(resumed.history) == 3 and next(resumed.model.parameters()).device.type == "cuda"
