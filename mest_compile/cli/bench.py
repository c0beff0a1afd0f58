"""`mest-compile bench`: compiled sparse kernels vs dense PyTorch, side by side."""

from __future__ import annotations

import json

import click

from mest_compile.cli.group import cli
from mest_compile.errors import MestError


@cli.command()
@click.option("--scheme", default="free_block_prune_column_4", show_default=True, help="sparsity scheme")
@click.option("--sparsity", type=float, default=0.9, show_default=True)
@click.option("--model", default="resnet32", show_default=True, help="model whose sparse layers are measured")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--reps", type=int, default=30, show_default=True, help="calls of each layer phase per round")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="timed rounds of each side (each in its own process, taking turns), after a warm-up round")
@click.option("--step-engine", type=click.Choice(["tvm", "torch"]), default="tvm", show_default=True,
              help="the compiled training step: tvm (train --engine tvm) or torch (train --compiled)")
@click.option("--step/--no-step", default=True, show_default=True, help="also time a whole training step")
@click.option("--target", default="host", show_default=True, help="target preset (kernels run on this machine)")
@click.option("--work-dir", type=click.Path(file_okay=False), help="use the kernels tuned by `mest-compile tune` here")
@click.option("--against", type=click.Choice(["dense", "untuned"]), default="dense", show_default=True,
              help="untuned: the --work-dir kernels against the hand-written ones (every tuned layer)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench(scheme: str, sparsity: float, model: str, batch: int, reps: int, rounds: int, step_engine: str, step: bool,
          target: str, work_dir: str | None, against: str, as_json: bool) -> None:
    """Time every distinct sparse layer (forward, input and weight gradient) and a training step.

    \b
    Examples:
      mest-compile bench --scheme block --sparsity 0.9
      mest-compile bench --work-dir tuned/host-block --against untuned
    """
    from mest_compile.compiler.bench.run import format_bench, run_bench
    from mest_compile.compiler.tune.records import use_records

    if against == "untuned":
        from mest_compile.compiler.bench.tuned import (
            format_tuned_bench,
            run_tuned_bench,
        )

        if work_dir is None:
            raise MestError("--against untuned compares the kernels tuned in --work-dir: give --work-dir")
        tuned = run_tuned_bench(work_dir, reps=reps)
        click.echo(json.dumps(tuned) if as_json else format_tuned_bench(tuned))
        return
    if work_dir is not None:
        use_records(work_dir)  # refused here, in one line, if the work dir is unreadable

    if reps < 1 or rounds < 1:
        raise MestError(f"--reps and --rounds must be at least 1, got {reps} and {rounds}")
    result = run_bench(scheme, sparsity, model=model, batch=batch, reps=reps, step=step, target=target,
                       rounds=rounds, step_engine=step_engine, work_dir=work_dir)
    click.echo(json.dumps(result) if as_json else format_bench(result))
