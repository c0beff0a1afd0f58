"""`mest-compile prebuild`: a run's kernels built here for a board that cannot build them (`train --prebuilt`)."""

from __future__ import annotations

import pathlib
from typing import Any

import click

from mest_compile.cli.group import cli
from mest_compile.cli.train import run_without_directory, with_config_options
from mest_compile.io import atomic_directory
from mest_compile.train.config import TrainConfig


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of the run's settings (as for `train`); flags override it")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="the kernel folder (new or empty)")
@with_config_options
def prebuild(config_file: str | None, out: str, **flags: Any) -> None:
    """Build a run's sparse kernels for --target (e.g. arm) into a folder that `train --compiled --prebuilt` loads."""
    from mest_compile.compiler.prebuilt import prebuild as build_into
    from mest_compile.compiler.target import as_target
    from mest_compile.compiler.tune.machine import records_for

    config = TrainConfig.load(config_file, flags)
    target = as_target(config.compile.target)
    records = records_for(config.compile.work_dir, config.compile.tuning)
    folder = pathlib.Path(out)
    with atomic_directory(folder) as work, run_without_directory(config) as trainer:
        manifest = build_into(trainer.model, trainer.data.train_x[: config.optim.batch_size], target, work,
                              records=records)
    click.echo(f"{manifest.name} and the kernels of {target.name} in {folder}\n"
               f"on the board: mest-compile train --compiled --prebuilt {folder} (with the same settings)")
