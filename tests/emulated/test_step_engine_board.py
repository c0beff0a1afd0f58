"""`train --engine tvm --target arm --rpc emulated`: MEST training on the emulated board over TVM's RPC."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

pytestmark = pytest.mark.emulated

BASE = TrainConfig(
    dataset="digits", model="small_cnn", scheme="free_block_prune_column_4", sparsity=0.75, epochs=2, batch_size=64,
    seed=3, engine="tvm", target="arm", rpc="emulated",
    lower_bound="0.8", upper_bound="0.75", mask_update_decay_epoch="5", sp_mask_update_freq=1,
)


def test_training_on_the_emulated_board_follows_the_host(tmp_path: pathlib.Path) -> None:
    board = Trainer(BASE, tmp_path / "board")
    summary = board.fit()
    engine = summary["engine"]
    assert engine["device"] == "emulated aarch64 board" and engine["target"] == "arm"
    assert {entry["status"] for entry in engine["layers"].values()} == {"compiled"}
    # The second epoch's mutation is absorbed by repacking: the uploaded steps are reused.
    assert engine["builds"] == 2 and engine["repacks"] == len(board.layers) and engine["rebuilds"] == 0
    assert 0 < engine["bytes_kept"]  # what did not change after the mutation was not sent again
    host = Trainer(dataclasses.replace(BASE, target="host", rpc=None), tmp_path / "host")
    host.fit()
    # aarch64 and x86 kernels sum in other orders: the first epoch agrees closely, the run loosely.
    assert board.history[0]["train_loss"] == pytest.approx(host.history[0]["train_loss"], rel=1e-5)
    assert board.history[-1]["train_loss"] == pytest.approx(host.history[-1]["train_loss"], rel=1e-2)
    assert summary["final_test_acc"] > 0.5


@pytest.mark.parametrize(("settings", "message"), [
    ({"rpc": None}, "give --rpc HOST:PORT"),
    ({"target": "host"}, "this machine's CPU"),
    ({"rpc": "127.0.0.1:1"}, "cannot reach the RPC tracker"),
    ({"engine": "torch", "target": "host"}, "--engine torch runs in this process"),
])
def test_bad_board_settings_are_refused(settings: dict, message: str, tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, **{"rpc_key": "k", **settings})
    with pytest.raises(MestError, match=message):
        Trainer(config, tmp_path)
