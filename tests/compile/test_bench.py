"""`mest-compile bench` measures, checks and reports in the documented JSON shape."""

from __future__ import annotations

import json

from click.testing import CliRunner

import mest_compile.cli.bench  # noqa: F401  (registers the command)
from mest_compile.cli import cli


def test_bench_json_shape() -> None:
    result = CliRunner().invoke(cli, ["bench", "--scheme", "block", "--model", "small_cnn", "--batch", "4",
                                      "--reps", "2", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["scheme"] == "free_block_prune_column_4" and report["sparsity"] == 0.9
    assert len(report["layers"]) == 2
    for layer in report["layers"]:
        for key in ("name", "shape", "speedup_fwd", "speedup_dgrad", "speedup_wgrad", "speedup_total"):
            assert key in layer
        assert layer["speedup_total"] > 0
    assert {"dense_ms", "sparse_ms", "speedup"} <= set(report["step"])
    assert report["memory"]["packed_bytes"] < report["memory"]["dense_bytes"]
    # The dense side as a user runs it: its own process, which never loaded TVM.
    assert report["sides"]["dense"]["tvm_loaded"] is False and report["rounds"] == 1
    assert report["step"]["engine"] == "tvm" and report["cpu"]
    assert all(report["memory"]["peak_rss_bytes"][side] > 0 for side in ("dense", "compiled"))


def test_bench_rejects_a_scheme_without_kernels() -> None:
    result = CliRunner().invoke(cli, ["bench", "--scheme", "nonsense"])
    assert result.exit_code == 2
    assert "unknown sparsity scheme 'nonsense'" in result.stderr


def test_bench_times_the_torch_engine_step_too() -> None:
    result = CliRunner().invoke(cli, ["bench", "--scheme", "channel", "--model", "small_cnn", "--batch", "4",
                                      "--reps", "1", "--rounds", "1", "--step-engine", "torch", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["step"]["engine"] == "torch" and report["step"]["sparse_ms"] > 0
    assert report["sides"]["compiled"]["layers"]["features.conv2"]["unit"] == "filter"


def test_bench_refuses_zero_rounds() -> None:
    result = CliRunner().invoke(cli, ["bench", "--rounds", "0"])
    assert result.exit_code == 2 and "--rounds" in result.stderr
