"""Data-parallel training with 2 processes on 127.0.0.1 (gloo) against one process on the same global batch.

The equality runs use `plain_cnn` (small_cnn without BatchNorm, registered by
`distributed_worker.py`): with BatchNorm each rank normalises its part with its own statistics.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from mest_compile.algorithms.distributed import DataParallel, DistributedConfig
from mest_compile.algorithms.packed_grads import PackedGradients
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.checkpoint import checkpoint_path, load_checkpoint
from mest_compile.train.models import build_model

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
# SGD: Adam's normalised update turns the rounding of near-zero gradients into 1e-3 weight
# differences within two epochs (measured), SGD keeps them at 1e-8. Mutating every epoch with a
# gradient-aware score makes the masks depend on the averaged gradients. A constant rate: the
# runs differ in length (cosine would differ by epoch).
ARGS = ["--model", "plain_cnn", "--batch-size", "128", "--lr-scheduler", "constant", "--lower-bound", "0.92",
        "--upper-bound", "0.9", "--mask-update-decay-epoch", "9", "--sp-mask-update-freq", "1", "--sp-lmd", "0.5",
        "--data-efficient", "--remove-data-epoch", "1", "--remove-n", "100", "--quiet"]
KEYS = ("train_loss", "test_loss", "train_acc", "test_acc", "sparsity")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return {**env, **extra}


def _single(out: pathlib.Path, *args: str) -> None:
    subprocess.run([sys.executable, str(WORKER), "train", "--out", str(out), *args], env=_env(), check=True,
                   capture_output=True, timeout=120)


def _history(run: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _masks(run: pathlib.Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(checkpoint_path(run))["model"]
    return {name: value for name, value in model.items() if name.endswith(".mask")}


def _close(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for key in KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("distributed")
    _single(root / "single", "--epochs", "3", *ARGS)
    pair = root / "pair"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(WORKER), "train", "--out", str(pair), "--epochs", "2", *ARGS],
                   env=_env(), check=True, capture_output=True, timeout=180)
    found = {"single": root / "single", "pair_history": _history(pair),
             "pair_summary": json.loads((pair / "summary.json").read_text()), "pair_masks": _masks(pair)}
    _single(pair, "--resume", "--epochs", "3")  # the 2-process checkpoint, continued on 1 process
    found["resumed"] = pair
    return found


@pytest.mark.slow
def test_two_ranks_train_like_one_process_on_the_same_global_batch(runs: dict[str, Any]) -> None:
    single = _history(runs["single"])[:2]
    _close(runs["pair_history"], single)
    # Each rank counted its half of every batch; the epoch's FLOPs are the sum over ranks.
    assert [r["training_flops"] for r in runs["pair_history"]] == [r["training_flops"] for r in single]


@pytest.mark.slow
def test_sync_batchnorm_trains_like_one_process(tmp_path: pathlib.Path) -> None:
    # small_cnn has BatchNorm; batch 128 leaves a last batch of 29 (15 + 14 on two ranks: uneven).
    args = ["--batch-size", "128", "--lr-scheduler", "constant", "--epochs", "2", "--quiet"]
    _single(tmp_path / "single", *args)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "mest_compile", "train", "--out", str(tmp_path / "pair"), *args, "--sync-bn"],
                   env=_env(), check=True, capture_output=True, timeout=180)
    # The statistics are summed in float64 from every rank's part, not in one float32 pass: losses
    # 1e-6 apart, and an example on the edge may flip its prediction.
    for got, ref in zip(_history(tmp_path / "pair"), _history(tmp_path / "single"), strict=True):
        for key in ("train_loss", "test_loss", "sparsity"):
            assert got[key] == pytest.approx(ref[key], rel=2e-5), (got["epoch"], key)
        for key in ("train_acc", "test_acc"):
            assert got[key] == pytest.approx(ref[key], abs=3e-3), (got["epoch"], key)
    assert _history(tmp_path / "single")[-1]["train_acc"] > 0.2  # it learned: the comparison means something


@pytest.mark.slow
def test_masks_agree_across_ranks_after_mutation(runs: dict[str, Any]) -> None:
    summary = runs["pair_summary"]
    info = summary["distributed"]
    assert summary["mask_updates"] == 2
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    # Checked at the start, after each of the 2 mutations and after each of the 2 epochs.
    assert info["mask_checks"] == 5
    assert len(set(info["mask_fingerprints"])) == 1
    assert info["reduced_bytes_per_step"] < info["dense_bytes_per_step"]
    assert any(m.sum() != m.numel() for m in runs["pair_masks"].values())


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_process(runs: dict[str, Any]) -> None:
    _close(_history(runs["resumed"]), _history(runs["single"]))
    single = _masks(runs["single"])
    for name, mask in _masks(runs["resumed"]).items():
        assert torch.equal(mask, single[name]), name


@pytest.mark.slow
def test_ranks_whose_masks_differ_stop_with_one_line(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(WORKER), "train", "--out", str(tmp_path / "run"), "--epochs", "3", "--batch-size",
                           "256", "--skew-masks-on-rank", "1", "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    expected = "error: masks or kept examples differ between ranks after epoch 1: rank 1 disagrees with rank 0"
    assert expected in done.stderr
    assert load_checkpoint(checkpoint_path(tmp_path / "run"))["epoch"] == 0  # epoch 1 never saved


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_stops_the_others_with_one_line(fault: signal.Signals, tmp_path: pathlib.Path) -> None:
    # Started by hand with torchrun's variables: torchrun's agent would stop the survivor itself.
    # A killed rank closes its connections (noticed at once); a hung one is noticed after the
    # timeout (10 s: the second rank must still manage to join on 2 busy cores).
    timeout = 10
    port = str(_free_port())
    out = tmp_path / "run"
    ranks = [subprocess.Popen([sys.executable, "-m", "mest_compile", "train", "--out", str(out), "--epochs", "500",
                               "--batch-size", "256", "--dist-timeout", str(timeout), "--quiet"],
                              env=_env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    try:
        deadline = time.monotonic() + 90
        while not checkpoint_path(out).exists():
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()
            time.sleep(0.2)
        ranks[1].send_signal(fault)
        lost = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=60)
        stopped = time.monotonic() - lost
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()  # a stopped process dies of SIGKILL too
    assert stopped < timeout + 15  # the timeout, the survivors' grace for each other (5 s), slack
    assert ranks[0].returncode == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: rank 1 of 2 stopped responding"), stderr
    assert "Traceback" not in stderr
    assert load_checkpoint(checkpoint_path(out))["epoch"] >= 0


def _rank_process(launcher: int, rank: int) -> int:
    """The pid of the worker with RANK=`rank` among the children of the torchrun process `launcher`."""
    children = pathlib.Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc")
def test_torchrun_stops_the_run_when_a_rank_is_killed(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", "-m", "mest_compile", "train", "--out", str(out), "--epochs", "500",
                                 "--batch-size", "256", "--quiet"],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not checkpoint_path(out).exists():
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
            time.sleep(0.2)
        os.kill(_rank_process(launcher.pid, 1), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "rank        : 1" in stderr or "rank: 1" in stderr, stderr  # torchrun's report names it
    assert load_checkpoint(checkpoint_path(out))["epoch"] >= 0


def test_packed_gradients_reduce_only_the_kept_values() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    layers = sparsify(model, "irregular", uniform_profile(model, 0.9))
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    sent: list[int] = []

    def twice(flat: torch.Tensor) -> None:  # two ranks holding the same gradient
        sent.append(flat.numel())
        flat.mul_(2)

    grads = PackedGradients(model, layers, packed=True)
    grads.reduce_(0.5, twice)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, before[name]), name
    kept = sum(int(layer.mask.sum()) for layer in layers.values())
    weights = sum(layer.weight.numel() for layer in layers.values())
    dense = sum(p.numel() for p in model.parameters())
    assert sent == [dense - weights + kept]
    assert grads.packed_bytes == 4 * sent[0] and grads.dense_bytes == 4 * dense


def test_every_rank_takes_a_contiguous_part_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # the algorithm sets it when unset
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        parts.append(DataParallel(DistributedConfig()).shard_batch(None, 10))  # type: ignore[arg-type]
    assert [(part.start, part.stop) for part in parts] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(MestError, match="a batch of 2 examples cannot be split across 3 ranks"):
        DataParallel(DistributedConfig()).shard_batch(None, 2)  # type: ignore[arg-type]
