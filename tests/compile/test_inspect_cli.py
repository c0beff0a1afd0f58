"""`mest-compile inspect`: outputs, artifacts, and one-line errors (exit status 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mest_compile.cli.inspect  # noqa: F401  (registers the command)
from mest_compile.cli import cli

LAYER = ["inspect", "--scheme", "block", "--shape", "8,4,3,3", "--input", "1,4,6,6", "--padding", "1"]
MODEL = ["inspect", "--model", "small_cnn", "--sparsity", "0.8", "--scheme", "block", "--input", "1,3,8,8"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_model_graph_and_stats() -> None:
    code, out, err = run(*MODEL, "--show", "graph", "--show", "stats")
    assert code == 0, err
    assert "==== traced graph (before the rewrite)" in out and "==== rewritten graph" in out
    assert out.count("-> call_tir(block_fwd_") == 2  # small_cnn's MEST layers: all but the first conv
    assert "==== kernel statistics" in out and "features.conv2.weight" in out and "TIR of" not in out


def test_layer_everything_and_artifacts(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(*LAYER, "--target", "mali", "--show", "all", "--out", str(out_dir))
    assert code == 0, err
    for title in ("TIR of block_fwd_gpu_", "OpenCL C of block_fwd_gpu_", "kernel statistics"):
        assert f"==== {title}" in out
    assert f"wrote 7 files to {out_dir}" in out  # no assembly file: OpenCL has none
    kernel = "block_fwd_gpu_c4h6w6_o8k3x3s1p1"
    for name in ("graph_before.py", "graph_after.py", "rewrite.txt", "report.html", f"kernels/{kernel}.tir.py",
                 f"kernels/{kernel}.cl"):  # fmt: skip
        assert (out_dir / name).is_file(), name
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["layers"][0]["kernel"] == kernel and stats["layers"][0]["flops"] > 0
    html = (out_dir / "report.html").read_text()
    assert "__kernel void" in html and "R.call_tir" in html


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--scheme", "diagonal", "--shape", "8,4,3,3"], "'diagonal'"),
        (["--scheme", "block", "--shape", "8,4,3,3", "--target", "tpu"], "unknown target 'tpu'"),
        (["--scheme", "block", "--shape", "6,4,3,3"], "6"),  # block needs filters in groups of 4
        (["--scheme", "block", "--shape", "8,4,3"], "--shape must be 4"),
        (["--scheme", "block", "--shape", "8,4,3,3", "--input", "1,5,6,6"], "--input has 5 channels"),
        (["--scheme", "block", "--shape", "8,4,3,3", "--show", "everything"], "unknown --show 'everything'"),
        (["--scheme", "block"], "give --model"),
        (["--scheme", "block", "--model", "small_cnn", "--shape", "8,4,3,3"], "not both"),
        (["--scheme", "block", "--model", "nonet"], "'nonet'"),
    ],
)
def test_bad_input_is_one_line(flags: list[str], needle: str) -> None:
    assert_user_error(flags, needle)


def test_a_model_without_sparse_layers_is_an_error(tmp_path: Path) -> None:
    profile = tmp_path / "empty.yaml"
    profile.write_text("prune_ratios:\nrho:\n  0.001\n")
    assert_user_error(["--scheme", "block", "--model", "small_cnn", "--profile", str(profile)], "no sparse layer")


def assert_user_error(flags: list[str], needle: str) -> None:
    code, out, err = run("inspect", *flags)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in out + err
