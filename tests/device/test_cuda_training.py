"""`train --compiled --target cuda`: a digits run with Elastic Mutation on the GPU kernels follows the host run."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest
import torch

from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.9, epochs=2, batch_size=64, seed=5, scheme="free_block_prune_column_4",
    lower_bound="0.9-0.9-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-4", sp_mask_update_freq=1,
)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA (the CPU build)")
def test_training_on_the_gpu_follows_the_host_run(cuda_target: Any, tmp_path: pathlib.Path) -> None:
    reference = Trainer(BASE, tmp_path / "host")
    reference.fit()
    run = Trainer(dataclasses.replace(BASE, compiled=True, target="cuda"), tmp_path / "cuda")
    summary = run.fit()
    for name, entry in summary["kernels"]["layers"].items():
        assert entry["status"] == "compiled" and entry["runs_on"] == "cuda", (name, entry)
        assert entry["backend"]["launches"] > 0
    for ref, got in zip(reference.history, run.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=2e-2), got["epoch"]
    assert run.history[1].get("mutation") is not None
    resumed = Trainer.resume(tmp_path / "cuda", epochs=3)  # a GPU checkpoint resumes (saved loadable on CPUs)
    resumed.fit()
    assert len(resumed.history) == 3 and next(resumed.model.parameters()).device.type == "cuda"
