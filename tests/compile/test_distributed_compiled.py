"""Two data-parallel ranks (gloo, 127.0.0.1) each running the compiled kernels follow one masked-dense process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).parents[1] / "unit" / "distributed_worker.py"
# plain_cnn (no BatchNorm): the split batch trains like the whole one; a mutation every epoch.
ARGS = ["--model", "plain_cnn", "--scheme", "free_block_prune_column_4", "--batch-size", "128", "--epochs", "2",
        "--lr-scheduler", "constant", "--lower-bound", "0.92", "--upper-bound", "0.9", "--mask-update-decay-epoch", "9",
        "--sp-mask-update-freq", "1", "--quiet"]
# The kernels sum in another order than oneDNN (tests/compile/test_training_compiled.py).
LOSS_RTOL = 1e-2


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}


def _history(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_on_compiled_kernels_follow_one_masked_dense_process(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(WORKER), "train", "--out", str(tmp_path / "dense"), *ARGS], env=_env(),
                   check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(WORKER), "train", "--out", str(tmp_path / "pair"), *ARGS, "--compiled", "--fallback", "never"],
                   env=_env(), check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "pair" / "summary.json").read_text())
    assert {entry["status"] for entry in summary["kernels"]["layers"].values()} == {"compiled"}
    assert summary["distributed"]["world_size"] == 2
    assert len(set(summary["distributed"]["mask_fingerprints"])) == 1
    for got, ref in zip(_history(tmp_path / "pair"), _history(tmp_path / "dense"), strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=LOSS_RTOL), got["epoch"]
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
