"""The command line: bad input is one line on stderr, exit status 2, no traceback, nothing overwritten."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

import mest_compile.cli.profile  # noqa: F401  (registers the command)
import mest_compile.cli.schemes  # noqa: F401
import mest_compile.cli.train  # noqa: F401
from mest_compile.cli import cli

QUICK = ["--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--batch-size", "256", "--quiet"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(args: list[str], needle: str) -> None:
    code, out, err = run(*args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--scheme", "diagonal"], "'diagonal'"),
        (["--sparsity", "1.5"], "1.5"),
        (["--sparsity", "-0.1"], "-0.1"),
        (["--lower-bound", "0.9-abc", "--upper-bound", "0.9", "--mask-update-decay-epoch", "5"], "'abc'"),
        (["--lower-bound", "0.9-0.95", "--upper-bound", "0.9", "--mask-update-decay-epoch", "5-2"], "5-2"),
        (["--lower-bound", "0.9"], "--upper-bound"),
        (["--lower-bound", "0.9", "--upper-bound", "0.9"], "--mask-update-decay-epoch"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
        (["--dataset", "imagenet"], "'imagenet'"),
        (["--model", "vgg99"], "'vgg99'"),
        (["--compat", "everything"], "'everything'"),
        (["--compiled", "--tuning", "deep"], "--tuning takes off or quick"),
        (["--compiled", "--tuning", "quick", "--work-dir", "tuned"], "give one of them"),
        (["--scheme", "pattern", "--model", "resnet32", "--profile", "erk", "--sparsity", "0.95"], None),
    ],
)
def test_bad_flags(tmp_path: pathlib.Path, flags: list[str], needle: str | None) -> None:
    if needle is None:  # a valid combination: the scheme applies to every selected 3x3 layer
        code, out, err = run("train", *QUICK, "--out", str(tmp_path / "ok"), *flags)
        assert code == 0, err
        return
    assert_user_error(["train", *QUICK, "--out", str(tmp_path / "run"), *flags], needle)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_profile_naming_a_missing_layer(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("prune_ratios:\n  layer9.0.conv1.weight:\n    0.9\nrho:\n  0.001\n")
    assert_user_error(["train", *QUICK, "--profile", str(profile), "--out", str(tmp_path / "r")], "layer9.0.conv1.weight")


def test_block_scheme_on_a_shape_it_cannot_take(tmp_path: pathlib.Path) -> None:
    # The stem of resnet32 has 3 input channels but 32 outputs: fine; a profile on the 10-way linear is not a conv.
    profile = tmp_path / "p.yaml"
    profile.write_text("prune_ratios:\n  linear.weight:\n    0.9\n")
    assert_user_error(["train", *QUICK, "--model", "resnet32", "--profile", str(profile), "--out", str(tmp_path / "r")],
                      "linear.weight")


def test_unknown_config_key(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("scheme: irregular\nsparsty: 0.9\n")
    assert_user_error(["train", "--config", str(config), "--out", str(tmp_path / "r")], "'sparsty'")


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    garbage = b"\x00not a checkpoint" * 10
    (run_dir / "checkpoint.pt").write_bytes(garbage)
    assert_user_error(["train", "--resume", "--out", str(run_dir)], "corrupt")
    assert (run_dir / "checkpoint.pt").read_bytes() == garbage


def test_existing_run_is_not_overwritten(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run("train", *QUICK, "--out", str(run_dir))
    assert code == 0, err
    before = (run_dir / "checkpoint.pt").read_bytes()
    assert_user_error(["train", *QUICK, "--out", str(run_dir)], "--resume")
    assert_user_error(["train", "--resume", "--scheme", "block", "--out", str(run_dir)], "--scheme")
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_train_writes_the_run_directory(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run("train", *QUICK, "--epochs", "2", "--scheme", "block", "--data-efficient", "--out", str(run_dir))
    assert code == 0, err
    assert "test accuracy" in out and "features.conv2.weight" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["scheme"] == "block" and summary["layers"][0]["sparsity"] == pytest.approx(0.9, abs=0.01)
    png = (run_dir / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_schemes_and_profile_commands(tmp_path: pathlib.Path) -> None:
    code, out, _ = run("schemes")
    assert code == 0
    for name in ("irregular", "pattern", "filter_balance", "free_block_prune_column_4", "channel", "block"):
        assert name in out
    code, out, err = run("profile", "--model", "resnet32", "--kind", "erk", "--out", str(tmp_path / "erk.yaml"))
    assert code == 0, err
    assert "30 layers" in out


def test_console_script_prints_no_traceback(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from mest_compile.cli import main; main()", "train",
                           "--scheme", "nope", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown sparsity scheme 'nope'")
    assert "Traceback" not in proc.stderr
