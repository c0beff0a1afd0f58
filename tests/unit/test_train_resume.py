"""A resumed run continues exactly as the uninterrupted run: same masks, same losses."""

from __future__ import annotations

import pathlib

import pytest
import torch

from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

pytestmark = pytest.mark.slow

CONFIG = TrainConfig(
    dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=4, batch_size=128,
    lower_bound="0.92-0.91-0.9", upper_bound="0.85-0.875-0.9", mask_update_decay_epoch="2-3", sp_mask_update_freq=1,
    sp_lmd=0.5, data_efficient=True, remove_data_epoch=3, remove_n=100, seed=3,
)


def _masks(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: layer.mask.clone() for name, layer in trainer.layers.items()}


def test_resume_equals_uninterrupted_run(tmp_path: pathlib.Path) -> None:
    whole = Trainer(CONFIG, tmp_path / "whole")
    whole.fit()

    first = Trainer(CONFIG, tmp_path / "split")
    first.fit(stop_after=2)
    resumed = Trainer.resume(tmp_path / "split")
    assert resumed.start_epoch == 2
    resumed.fit()

    keys = ("train_loss", "test_loss", "train_acc", "sparsity", "n_train")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in whole.history]
    assert resumed.history[-1]["n_train"] == whole.history[0]["n_train"] - 100
    for name, mask in _masks(whole).items():
        assert torch.equal(mask, _masks(resumed)[name])
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    # The log holds each epoch once, also after the interruption.
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == CONFIG.epochs
    assert list((tmp_path / "split").glob("mest_unforget_*.pkl"))


def test_resume_can_extend_the_run(tmp_path: pathlib.Path) -> None:
    short = TrainConfig(dataset="digits", model="small_cnn", epochs=1, batch_size=256)
    Trainer(short, tmp_path).fit()
    resumed = Trainer.resume(tmp_path, epochs=2)
    summary = resumed.fit()
    assert summary["epochs"] == 2
    assert len(resumed.history) == 2
