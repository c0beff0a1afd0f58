"""The training bundle (`mest-compile export --train --target arm`) trains on the emulated board with no host attached."""

from __future__ import annotations

import json
import pathlib

import pytest

from mest_compile.compiler.step.bundle import export_bundle, load_trained, train_on_board
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

pytestmark = pytest.mark.emulated

CONFIG = TrainConfig(dataset="digits", model="small_cnn", scheme="pattern+filter_balance", sparsity=0.75, epochs=2,
                     batch_size=64, seed=1, lower_bound="0.8", upper_bound="0.75", mask_update_decay_epoch="5",
                     sp_mask_update_freq=1)


def test_bundle_trains_on_the_board(tmp_path: pathlib.Path) -> None:
    bundle = export_bundle(Trainer(CONFIG, tmp_path / "export"), as_target("arm"), tmp_path / "bundle")
    assert (bundle / "step.so").read_bytes()[18:20] == b"\xb7\x00"  # ELF machine: AArch64
    output = train_on_board(bundle)
    assert "epoch 2/2" in output and "masks mutated" in output
    progress = json.loads((bundle / "run" / "progress.json").read_text())
    assert progress["epochs_done"] == 2 and progress["history"][1]["mutation"]
    trainer = Trainer(CONFIG, tmp_path / "host")
    load_trained(bundle, trainer)
    _, accuracy = trainer.evaluate()
    assert accuracy > 0.5
    assert trainer.sparsity() == pytest.approx(0.75, abs=0.01)
    with pytest.raises(MestError, match="already holds a run"):
        train_on_board(bundle)
