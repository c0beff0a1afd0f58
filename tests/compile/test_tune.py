"""`mest-compile tune` on the host, end to end: search, checked records, resume, replay into builds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mest_compile.cli import cli
from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.tune.records import MANIFEST, TuningRecords, use_records

SCHEME = "free_block_prune_column_4"
LAYER = ["--scheme", "block", "--shape", "16,8,3,3", "--input", "4,8,8,8", "--padding", "1", "--sparsity", "0.7"]
GEO = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)


def _tune(work_dir: Path, *extra: str) -> tuple[int, str]:
    from mest_compile.cli import tune  # noqa: F401  (registers the command)

    result = CliRunner().invoke(cli, ["tune", "--target", "host", *LAYER, "--work-dir", str(work_dir), *extra])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work_dir = tmp_path_factory.mktemp("tuned")
    code, out = _tune(work_dir, "--trials", "16", "--variants", "3")
    assert code == 0, out
    return work_dir


def test_tuning_writes_metaschedule_records_and_a_manifest(tuned: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    manifest = json.loads((tuned / MANIFEST).read_text())
    assert {e["which"] for e in manifest["kernels"].values()} == {"forward", "dgrad", "wgrad"}
    for entry in manifest["kernels"].values():
        assert entry["untuned_s"] > 0 and 0 < entry["tuned_s"] <= entry["untuned_s"]
        assert entry["trials"] >= 1 and entry["variants"][entry["best"]]["tiles"]
    database = ms.database.JSONDatabase(work_dir=str(tuned), allow_missing=False)  # plain TVM opens it
    records = database.get_all_tuning_records()
    assert len(records) >= 3
    # Only candidates that ran and matched PyTorch are committed (MetaSchedule's own callback
    # would also commit failures, with a run time of 1e10).
    assert all(max(float(s) for s in r.run_secs) < 1.0 for r in records)


def test_records_replay_onto_symbolic_kernels(tuned: Path) -> None:
    family = family_for(SCHEME)
    records = use_records(tuned)
    try:
        kernels = build.kernels_for(family, GEO, "host")  # gated like any build
        assert kernels.tuned == ("forward", "dgrad", "wgrad")
        best = {e["which"]: e["variants"][e["best"]]["tiles"] for e in records.manifest["kernels"].values()}
        for fields in best.values():
            assert all(getattr(kernels.tiles, k) == v for k, v in fields.items())
        # Another batch size and another mask than the tuning run measured with.
        from mest_compile.compiler.api import sparse_conv2d
        from mest_compile.compiler.formats.block import random_block_mask

        gen = torch.Generator().manual_seed(7)
        x = torch.randn(3, 8, 8, 8, generator=gen, requires_grad=True)
        w = torch.randn(16, 8, 3, 3, generator=gen, requires_grad=True)
        mask = random_block_mask(16, (8, 3, 3), 0.4, gen)
        sparse_conv2d(x, w, mask, scheme=SCHEME, padding=1).square().sum().backward()
        xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        F.conv2d(xr, wr * mask, padding=1).square().sum().backward()
        assert torch.allclose(x.grad, xr.grad, atol=1e-3) and torch.allclose(w.grad, wr.grad, atol=1e-3)
    finally:
        use_records(None)


def test_a_rerun_resumes(tuned: Path) -> None:
    before = json.loads((tuned / MANIFEST).read_text())
    start = time.perf_counter()
    code, out = _tune(tuned, "--trials", "1", "--variants", "3")  # fewer than already run: nothing to do
    assert code == 0, out
    assert "0 to run" in out and time.perf_counter() - start < 60
    after = json.loads((tuned / MANIFEST).read_text())
    assert {k: v["tuned_s"] for k, v in after["kernels"].items()} == {k: v["tuned_s"] for k, v in before["kernels"].items()}


def test_wrong_results_fail_the_measurement(tuned: Path, tmp_path: Path) -> None:
    """The runner's check: a candidate whose output is not PyTorch's raises (its run fails)."""
    from mest_compile.compiler.tune import measure

    got = np.ones((2, 3), np.float32)
    measure.check_output(got, got.copy())
    with pytest.raises(ValueError, match="wrong result"):
        measure.check_output(got, got * 1.01)
    with pytest.raises(ValueError, match="wrong result"):
        measure.check_output(got * np.nan, got)


def test_corrupt_database_is_refused_and_kept(tuned: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("database_workload.json", "database_tuning_record.json", MANIFEST):
        (broken / name).write_bytes((tuned / name).read_bytes())
    (broken / "database_tuning_record.json").write_text("[0, not json\n")
    code, out = _tune(broken, "--trials", "2")
    assert code == 2 and "cannot be read" in out and "Traceback" not in out
    assert (broken / "database_tuning_record.json").read_text() == "[0, not json\n"  # nothing lost or rewritten
    with pytest.raises(Exception, match="cannot be read"):
        TuningRecords(broken)


def test_foreign_or_missing_records_are_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text('{"kernels": {}}')
    code, out = _tune(tmp_path, "--trials", "2")
    assert code == 2 and "not a mest-compile tuning manifest" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="holds no manifest.json"):
        use_records(empty)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "cuda"], "CUDA GPU and there is none"),
        (["--target", "arm"], "--rpc HOST:PORT"),
        (["--target", "nope"], "unknown target 'nope'"),
        (["--rpc", "127.0.0.1:1", "--rpc-key", "pi", "--rpc-timeout", "2"], "cannot reach the RPC tracker"),
        (["--rpc", "nohost", "--rpc-key", "pi"], "HOST:PORT"),
        (["--kernels", "backward"], "--kernels takes"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    from mest_compile.cli import tune  # noqa: F401

    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["tune", *LAYER, "--work-dir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert time.perf_counter() - start < 30


def test_tuned_against_untuned_benchmark(tuned: Path) -> None:
    from mest_compile.compiler.bench.tuned import format_tuned_bench, run_tuned_bench

    result = run_tuned_bench(str(tuned), reps=3)
    (row,) = result["layers"]
    assert row["tuned"] == ["forward", "dgrad", "wgrad"] and set(row["phases"]) == {"fwd", "dgrad", "wgrad"}
    assert all(p["untuned_ms"] > 0 and p["tuned_ms"] > 0 for p in row["phases"].values())
    assert "tuned vs untuned" in format_tuned_bench(result)
    assert build.kernels_for(family_for(SCHEME), GEO, "host").tuned == ()  # records switched off again


def test_compiled_training_uses_the_records(tmp_path: Path) -> None:
    """`train --compiled --work-dir`: the model's layers run the kernels tuned for them."""
    from mest_compile.train.config import TrainConfig
    from mest_compile.train.loop import Trainer

    work_dir = tmp_path / "tuned"
    from mest_compile.cli import tune  # noqa: F401

    result = CliRunner().invoke(cli, ["tune", "--target", "host", "--model", "small_cnn", "--scheme", "block",
                                      "--input", "32,1,8,8", "--kernels", "forward", "--trials", "4", "--variants", "2",
                                      "--work-dir", str(work_dir)])
    assert result.exit_code == 0, result.output
    config = TrainConfig(dataset="digits", model="small_cnn", scheme="free_block_prune_column_4", sparsity=0.9,
                         epochs=1, batch_size=32, compiled=True, fallback="never", work_dir=str(work_dir))
    try:
        summary = Trainer(config, tmp_path / "run").fit()
    finally:
        use_records(None)
    layers = summary["kernels"]["layers"].values()
    assert layers and all(entry["tuned"] == ["forward"] for entry in layers)
