"""`mest-compile train`: MEST sparse training (EM, EM&S, data efficiency)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import click

from mest_compile.cli.group import cli
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig, setting_fields

def _option(field: dataclasses.Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    # Flags are the flat setting names (MEST's script variables); the help lives on the field.
    flag = "--" + field.name.replace("_", "-")
    kind = str(field.type)
    help_text = field.metadata["help"]
    if kind.startswith("bool"):
        return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=help_text)
    types = {"int": int, "float": float}
    param_type = next((t for prefix, t in types.items() if kind.startswith(prefix)), str)
    default = field.default if not isinstance(field.default, tuple) else ",".join(field.default)
    return click.option(flag, field.name, type=param_type, default=None, help=f"{help_text}  [default: {default}]")


def with_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    # One flag per setting of every section, the registered algorithms' included.
    for _, field in reversed(list(setting_fields().values())):
        command = _option(field)(command)
    return command


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of settings (keys are the flag names, flat or nested in sections); flags override it")
@click.option("--out", type=click.Path(file_okay=False), default="runs/mest", show_default=True,
              help="run directory: checkpoint, metrics.jsonl, summary.json, training.png")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--compare-dense", is_flag=True,
              help="also train the same model densely (in OUT/dense) and print both accuracies")
@with_config_options
def train(config_file: str | None, out: str, resume: bool, quiet: bool, compare_dense: bool,
          **flags: Any) -> None:
    """Train a sparse model with MEST's Elastic Mutation and Soft Memory Bound."""
    from mest_compile.algorithms.continual import with_benchmark_dataset
    from mest_compile.train.loop import Trainer
    from mest_compile.train.report import format_summary

    if resume:
        given = sorted(name for name, value in flags.items() if value is not None and name != "epochs")
        if config_file is not None or given:
            what = "--config" if config_file is not None else "--" + given[0].replace("_", "-")
            raise MestError(f"{what} cannot be combined with --resume: settings come from the checkpoint "
                            "(only --epochs may extend the run)")
        trainer = Trainer.resume(pathlib.Path(out), epochs=flags["epochs"], progress=not quiet)
        if trainer.writer:
            click.echo(f"resuming {out} at epoch {trainer.start_epoch + 1}/{trainer.config.epochs}", err=True)
    else:
        config = with_benchmark_dataset(TrainConfig.load(config_file, flags))
        trainer = Trainer(config, pathlib.Path(out), progress=not quiet)
    summary = trainer.fit()
    echo = click.echo if trainer.writer else _silent  # one process of a data-parallel run speaks
    echo(format_summary(summary))
    echo(f"\nrun directory: {out}")
    if compare_dense:
        dense_dir = pathlib.Path(out) / "dense"
        dense = Trainer(dense_baseline(trainer.config), dense_dir, progress=not quiet).fit()
        gap = 100 * (summary["final_test_acc"] - dense["final_test_acc"])
        echo(f"\n{100 * summary['sparsity']:.1f}% sparse: test accuracy {100 * summary['final_test_acc']:.2f}%"
             f"   dense: {100 * dense['final_test_acc']:.2f}%   difference {gap:+.2f} points"
             f"   (dense run in {dense_dir})")


def _silent(message: str) -> None:
    """Echoes nothing (the processes of a data-parallel run that do not write)."""


def dense_baseline(config: TrainConfig) -> TrainConfig:
    """The same run without sparsity, data removal or sieving, freezing or gradient correction: plain dense
    training, what a sparse run is judged against."""
    return dataclasses.replace(config, profile="dense", ratio_space="overall", lower_bound=None, upper_bound=None,
                               mask_update_decay_epoch=None, data_efficient=False, remove_data_epoch=None,
                               remove_n=0, sorting_file=None, data_sieving=None, freeze=None, agc=False,
                               sparcl=False, tdm=False, ddr=False, dgm=False)


@contextlib.contextmanager
def run_without_directory(config: TrainConfig) -> Iterator[Any]:
    """The `Trainer` of `config` for commands that only read a run (its model, data, schedule): its run
    directory is a temporary one, and nothing is written there."""
    from mest_compile.train.loop import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        yield Trainer(config, pathlib.Path(scratch) / "run")
