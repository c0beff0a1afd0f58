"""`mest-compile train`: MEST sparse training (EM, EM&S, data efficiency)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import click

from mest_compile.cli import cli
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig

# One flag per config field, named like MEST's script variables; help says what MEST calls it.
HELP = {
    "model": "model name (resnet32 is MEST's wide ResNet-32; small_cnn for quick runs)",
    "dataset": "digits | cifar10 | cifar100 | synthetic",
    "data_dir": "directory holding the CIFAR python-pickle files",
    "scheme": "sparsity scheme (SPARSITY_TYPE), e.g. irregular, pattern+filter_balance, block, channel",
    "sparsity": "uniform per-layer sparsity when --profile is not a file",
    "profile": "MEST per-layer YAML (CONFIG_FILE), or 'uniform' / 'erk' generated for the model",
    "ratio_space": "'kernel' if profile and bounds hold MEST pattern kernel-level ratios (0.775 = 90%)",
    "lower_bound": "LOWER_BOUND: prune-to sparsity per stage, e.g. 0.92-0.91-0.9",
    "upper_bound": "UPPER_BOUND: grow-to sparsity per stage, e.g. 0.9-0.9-0.9",
    "mask_update_decay_epoch": "MASK_UPDATE_DECAY_EPOCH: stage boundaries, e.g. 90-120",
    "sp_mask_update_freq": "SP_MASK_UPDATE_FREQ: mutate every N epochs (epoch 0 included)",
    "sp_lmd": "weight of |gradient| in the prune score (0: magnitude only, as MEST's scripts)",
    "regrow_momentum": "reset: regrown weights start with zero momentum; keep: MEST's behaviour",
    "compat": "comma-separated reference-behaviour switches, or 'reference' (see docs/QUIRKS.md)",
    "optimizer": "sgd | adam",
    "lr": "initial learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "lr_scheduler": "cosine | step | constant",
    "epochs": "number of epochs (may be raised with --resume to extend a run)",
    "batch_size": "training batch size",
    "test_batch_size": "evaluation batch size",
    "seed": "seed of every random choice (init, batches, augmentation, growth)",
    "data_efficient": "record forgetting statistics during training",
    "remove_data_epoch": "remove examples at the start of this epoch (RM_EPOCH)",
    "remove_n": "number of least-forgotten examples to remove (REMOVE_N)",
    "keep_lowest_n": "skip this many least-forgotten examples before removing (KEEP_LOWEST_N)",
    "sorting_file": "MEST importance .pkl to remove by, instead of this run's statistics",
    "output_name": "prefix of the written importance file",
    "threads": "torch intra-op threads",
    "compiled": "run the sparse layers on compiled TVM kernels (forward and both gradients)",
    "target": "target preset of the compiled kernels",
    "fallback": "measure: a layer whose compiled kernels are slower than dense stays dense; never",
    "work_dir": "tuning records (a `mest-compile tune --work-dir`) the compiled kernels use",
}


def _option(field: dataclasses.Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    flag = "--" + field.name.replace("_", "-")
    kind = str(field.type)
    if kind.startswith("bool"):
        return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=HELP[field.name])
    types = {"int": int, "float": float}
    param_type = next((t for prefix, t in types.items() if kind.startswith(prefix)), str)
    default = field.default if not isinstance(field.default, tuple) else ",".join(field.default)
    return click.option(flag, field.name, type=param_type, default=None,
                        help=f"{HELP[field.name]}  [default: {default}]")


def _with_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for field in reversed(dataclasses.fields(TrainConfig)):
        command = _option(field)(command)
    return command


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of settings (keys are the flag names); flags override it")
@click.option("--out", type=click.Path(file_okay=False), default="runs/mest", show_default=True,
              help="run directory: checkpoint, metrics.jsonl, summary.json, training.png")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--compare-dense", is_flag=True,
              help="also train the same model densely (in OUT/dense) and print both accuracies")
@_with_config_options
def train(config_file: str | None, out: str, resume: bool, quiet: bool, compare_dense: bool,
          **flags: Any) -> None:
    """Train a sparse model with MEST's Elastic Mutation and Soft Memory Bound."""
    from mest_compile.train.loop import Trainer
    from mest_compile.train.report import format_summary

    if resume:
        given = sorted(name for name, value in flags.items() if value is not None and name != "epochs")
        if config_file is not None or given:
            what = "--config" if config_file is not None else "--" + given[0].replace("_", "-")
            raise MestError(f"{what} cannot be combined with --resume: settings come from the checkpoint "
                            "(only --epochs may extend the run)")
        trainer = Trainer.resume(pathlib.Path(out), epochs=flags["epochs"], progress=not quiet)
        click.echo(f"resuming {out} at epoch {trainer.start_epoch + 1}/{trainer.config.epochs}", err=True)
    else:
        trainer = Trainer(TrainConfig.load(config_file, flags), pathlib.Path(out), progress=not quiet)
    summary = trainer.fit()
    click.echo(format_summary(summary))
    click.echo(f"\nrun directory: {out}")
    if compare_dense:
        dense_dir = pathlib.Path(out) / "dense"
        dense = Trainer(dense_baseline(trainer.config), dense_dir, progress=not quiet).fit()
        gap = 100 * (summary["final_test_acc"] - dense["final_test_acc"])
        click.echo(f"\n{100 * summary['sparsity']:.1f}% sparse: test accuracy {100 * summary['final_test_acc']:.2f}%"
                   f"   dense: {100 * dense['final_test_acc']:.2f}%   difference {gap:+.2f} points"
                   f"   (dense run in {dense_dir})")


def dense_baseline(config: TrainConfig) -> TrainConfig:
    """The same run without sparsity or data removal: what a sparse run is judged against."""
    return dataclasses.replace(config, profile="dense", ratio_space="overall", lower_bound=None, upper_bound=None,
                               mask_update_decay_epoch=None, data_efficient=False, remove_data_epoch=None,
                               remove_n=0, sorting_file=None)
