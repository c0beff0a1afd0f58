"""Fixtures shared by the torch-only tests."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import pytest
from click.testing import CliRunner

import mest_compile.cli.train  # noqa: F401  (registers the command)
from mest_compile.cli import cli
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer


@pytest.fixture
def refused_train(tmp_path: pathlib.Path) -> Callable[[list[str], str], None]:
    """`refused_train(flags, needle)`: a one-epoch `train` with `flags` exits 2 with one error line naming `needle`."""

    def check(flags: list[str], needle: str) -> None:
        result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"), *flags])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
        assert not (tmp_path / "run" / "checkpoint.pt").exists()

    return check


@pytest.fixture
def resumed_run(tmp_path: pathlib.Path) -> Callable[[TrainConfig, int, Sequence[str]], tuple[Trainer, Trainer]]:
    """`resumed_run(config, stop_after, keys)`: a run interrupted after `stop_after` epochs and resumed
    logs the same `keys` in every epoch as the uninterrupted run; returns (uninterrupted, resumed)."""

    def check(config: TrainConfig, stop_after: int, keys: Sequence[str]) -> tuple[Trainer, Trainer]:
        whole = Trainer(config, tmp_path / "whole")
        whole.fit()
        Trainer(config, tmp_path / "split").fit(stop_after=stop_after)
        resumed = Trainer.resume(tmp_path / "split")
        resumed.fit()
        assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in whole.history]
        return whole, resumed

    return check
