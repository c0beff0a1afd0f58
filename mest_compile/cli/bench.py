"""`mest-compile bench`: compiled sparse kernels vs dense PyTorch, side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from mest_compile.cli.group import cli
from mest_compile.errors import MestError
from mest_compile.io import atomic_write_text


@cli.command()
@click.option("--scheme", "schemes", multiple=True, metavar="SCHEME",
              help="sparsity scheme [host: one, default free_block_prune_column_4; cuda: any number, default "
                   "block, pattern+filter_balance, channel and irregular]")
@click.option("--sparsity", type=float, default=0.9, show_default=True)
@click.option("--model", default="resnet32", show_default=True, help="model whose sparse layers are measured")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--reps", type=int, default=30, show_default=True, help="calls of each layer phase per round")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="timed rounds of each side (each in its own process, taking turns), after a warm-up round")
@click.option("--step-engine", type=click.Choice(["tvm", "torch"]),
              help="the compiled training step: tvm (train --engine tvm, the host default) or torch "
                   "(train --compiled; the cuda target's only step: compile_model on the GPU)")
@click.option("--step/--no-step", default=True, show_default=True, help="also time a whole training step")
@click.option("--target", default="host", show_default=True,
              help="target preset (kernels run on this machine); cuda: the GPU kernels against cuDNN")
@click.option("--work-dir", type=click.Path(file_okay=False), help="use the kernels tuned by `mest-compile tune` here")
@click.option("--tuning", type=click.Choice(["off", "quick"]), default="off", show_default=True,
              help="quick: the compiled side's layers tuned for this CPU first (seconds per layer, cached per machine)")
@click.option("--against", type=click.Choice(["dense", "untuned"]), default="dense", show_default=True,
              help="untuned: the tuned kernels (--work-dir or --tuning quick) against the hand-written ones")
@click.option("--json", "json_out", is_flag=False, flag_value="-", metavar="[FILE]",
              help="print one JSON object, or write it to FILE (atomically; the cuda bench rewrites it as it goes)")
def bench(schemes: tuple[str, ...], sparsity: float, model: str, batch: int, reps: int, rounds: int,
          step_engine: str | None, step: bool, target: str, work_dir: str | None, tuning: str, against: str,
          json_out: str | None) -> None:
    """Time every distinct sparse layer (forward, input and weight gradient) and a training step.

    \b
    Examples:
      mest-compile bench --scheme block --sparsity 0.9
      mest-compile bench --work-dir tuned/host-block --against untuned
      mest-compile bench --scheme block --tuning quick --against untuned
      mest-compile bench --target cuda --json gpu_bench.json
    """
    from mest_compile.compiler.bench.run import format_bench, run_bench
    from mest_compile.compiler.target import as_target
    from mest_compile.algorithms.compiled import check_tuning
    from mest_compile.compiler.tune.records import use_records

    check_tuning(tuning, work_dir)
    if as_target(target).tvm.kind.name == "cuda":
        if tuning != "off":
            raise MestError("--tuning quick tunes for this CPU; the cuda bench takes --work-dir records")
        _gpu_bench(schemes, sparsity, model, batch, reps, rounds, step_engine, step, target, work_dir, against,
                   json_out)
        return
    if len(schemes) > 1:
        raise MestError(f"the {target} bench takes one --scheme, got {len(schemes)}")
    scheme = schemes[0] if schemes else "free_block_prune_column_4"
    step_engine = step_engine or "tvm"

    if against == "untuned":
        from mest_compile.compiler.bench.run import IMAGE
        from mest_compile.compiler.bench.tuned import format_tuned_bench, run_quick_bench, run_tuned_bench
        from mest_compile.sparsity.schemes import get_scheme

        if work_dir is None and tuning == "off":
            raise MestError("--against untuned compares tuned kernels: give --work-dir or --tuning quick")
        tuned = (run_tuned_bench(work_dir, reps=reps) if work_dir is not None else
                 run_quick_bench(get_scheme(scheme).name, sparsity, model, batch, IMAGE, reps=reps))
        _emit(tuned, json_out, format_tuned_bench)
        return
    if work_dir is not None:
        use_records(work_dir)  # refused here, in one line, if the work dir is unreadable

    if reps < 1 or rounds < 1:
        raise MestError(f"--reps and --rounds must be at least 1, got {reps} and {rounds}")
    result = run_bench(scheme, sparsity, model=model, batch=batch, reps=reps, step=step, target=target,
                       rounds=rounds, step_engine=step_engine, work_dir=work_dir, tuning=tuning)
    _emit(result, json_out, format_bench)


def _gpu_bench(schemes: tuple[str, ...], sparsity: float, model: str, batch: int, reps: int, rounds: int,
               step_engine: str | None, step: bool, target: str, work_dir: str | None, against: str,
               json_out: str | None) -> None:
    from mest_compile.compiler.bench.gpu import format_gpu_bench, run_gpu_bench
    from mest_compile.compiler.tune.records import use_records

    if against != "dense":
        raise MestError("the cuda bench compares with cuDNN only: drop --against")
    if step_engine == "tvm":
        raise MestError("the cuda bench's training step is compile_model(model, 'cuda'): drop --step-engine tvm")
    if work_dir is not None:
        use_records(work_dir)
    to_file = json_out not in (None, "-")
    result = run_gpu_bench(schemes, sparsity, model=model, batch=batch, reps=reps, rounds=rounds, step=step,
                           target=target, json_path=json_out if to_file else None)
    click.echo(json.dumps(result) if json_out == "-" else format_gpu_bench(result))


def _emit(result: dict[str, Any], json_out: str | None, table: Callable[[dict[str, Any]], str]) -> None:
    """Print the table, or the JSON object (`--json`), or write it to a file (`--json FILE`) and print the table."""
    if json_out == "-":
        click.echo(json.dumps(result))
        return
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=1) + "\n")
    click.echo(table(result))
