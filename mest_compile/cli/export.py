"""`mest-compile export --train`: a self-contained training bundle for a board (no host attached)."""

from __future__ import annotations

from typing import Any

import click

from mest_compile.cli.group import cli
from mest_compile.cli.train import run_without_directory, with_config_options
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig


@cli.command()
@click.option("--train", "train_bundle", is_flag=True,
              help="write a training bundle: the compiled step, its state, the data and a numpy driver")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of the run's settings (as for `train`); flags override it")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="the bundle directory (new or empty)")
@with_config_options
def export(train_bundle: bool, config_file: str | None, out: str, **flags: Any) -> None:
    """Export a run for a board: `--train --target arm` writes a bundle that trains there with numpy and TVM's runtime."""
    if not train_bundle:
        raise MestError("export writes training bundles: pass --train (a trained model's forward graph is exported "
                        "by `mest_compile.compiler.graph.export`)")
    from mest_compile.compiler.step.bundle import export_bundle
    from mest_compile.compiler.target import as_target

    config = TrainConfig.load(config_file, flags)
    target = as_target(config.compile.target)
    with run_without_directory(config) as trainer:
        path = export_bundle(trainer, target, out)
    click.echo(f"training bundle for {target.name}: {path}\n"
               f"on the board: cd {path} && python -m mest_driver   (see {path}/README.md)")
