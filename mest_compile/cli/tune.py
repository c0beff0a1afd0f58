"""`mest-compile tune`: auto-tune the sparse kernels of a model (or one layer) for a target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mest_compile.cli.group import cli
from mest_compile.errors import MestError

if TYPE_CHECKING:
    from mest_compile.compiler.tune.measurements import RpcTarget

# The batch MEST trains with: kernels are tuned at the batch size they will run at.
DEFAULT_BATCH = 64


def _rpc_target(rpc: str | None, key: str | None, timeout_s: float) -> RpcTarget | None:
    """`--rpc HOST:PORT --rpc-key KEY`, else TVM's `TVM_TRACKER_HOST/PORT/KEY` variables; checked reachable."""
    from mest_compile.compiler.tune.remote import checked_tracker

    rpc = rpc or (f"{os.environ['TVM_TRACKER_HOST']}:{os.environ.get('TVM_TRACKER_PORT', '9190')}"
                  if os.environ.get("TVM_TRACKER_HOST") else None)
    key = key or os.environ.get("TVM_TRACKER_KEY")
    if rpc is None:
        if key is not None:
            raise MestError("--rpc-key needs --rpc HOST:PORT (or TVM_TRACKER_HOST)")
        return None
    if key is None:
        raise MestError("--rpc needs --rpc-key KEY (the key the device registered under; or TVM_TRACKER_KEY)")
    return checked_tracker(rpc, key, timeout_s)


@cli.command()
@click.option("--target", default="host", show_default=True,
              help="target preset (host, arm, mali, adreno, cuda), TVM tag or target dict")
@click.option("--model", help="registered model whose sparse layers are tuned (e.g. resnet32, small_cnn)")
@click.option("--profile", help="MEST per-layer profile YAML for --model")
@click.option("--sparsity", type=float, help="uniform sparsity of the masks the kernels are measured with (default 0.9)")
@click.option("--scheme", required=True, help="sparsity scheme (e.g. block)")
@click.option("--shape", help="one layer instead of a model: weight shape O,I,KH,KW")
@click.option("--input", "input_shape", help=f"input shape N,C,H,W; N is the batch tuned for (default {DEFAULT_BATCH},3,32,32)")
@click.option("--stride", type=int, default=1, show_default=True, help="stride of the --shape layer")
@click.option("--padding", type=int, default=0, show_default=True, help="padding of the --shape layer")
@click.option("--kernels", "phases", default="forward,dgrad,wgrad", show_default=True,
              help="which kernels: forward, dgrad, wgrad (comma-separated)")
@click.option("--trials", type=int, default=64, show_default=True,
              help="measurements in this run, over all kernels (a re-run adds to the records)")
@click.option("--variants", type=int, default=8, show_default=True, help="template variants (tile choices) per kernel")
@click.option("--work-dir", required=True, type=click.Path(file_okay=False), help="where the records are kept")
@click.option("--rpc", help="TVM RPC tracker HOST:PORT of the device (default: TVM_TRACKER_HOST/TVM_TRACKER_PORT)")
@click.option("--rpc-key", help="device key registered with the tracker (default: TVM_TRACKER_KEY)")
@click.option("--rpc-timeout", type=float, default=10.0, show_default=True, help="seconds to reach the tracker")
@click.option("--seed", type=int, default=0, show_default=True)
def tune(target: str, model: str | None, profile: str | None, sparsity: float | None, scheme: str, shape: str | None,
         input_shape: str | None, stride: int, padding: int, phases: str, trials: int, variants: int, work_dir: str,
         rpc: str | None, rpc_key: str | None, rpc_timeout: float, seed: int) -> None:
    """Search scheme-specific schedules with MetaSchedule, measured on the target; keep the records.

    The records (MetaSchedule's JSON database plus manifest.json) are what
    `train --compiled --work-dir`, `inspect --work-dir` and `export` replay.

    \b
    Examples:
      mest-compile tune --target host --model resnet32 --scheme block --trials 200 --work-dir tuned/
      mest-compile tune --target arm --rpc 192.168.1.5:9190 --rpc-key rpi4 --scheme block \\
          --shape 64,64,3,3 --input 64,64,16,16 --padding 1 --trials 64 --work-dir tuned-arm/
    """
    from mest_compile.compiler.phases import PHASES
    from mest_compile.compiler.inspect import layer_subject, model_subject
    from mest_compile.compiler.target import as_target
    from mest_compile.compiler.tune.extract import model_kernels
    from mest_compile.compiler.tune.measurements import MeasureOptions
    from mest_compile.compiler.tune.session import TuneOptions, tune_kernels
    from mest_compile.compiler.tune.summary import format_summary

    which = [p.strip() for p in phases.split(",") if p.strip()]
    if not which or any(p not in PHASES for p in which):
        raise MestError(f"--kernels takes {', '.join(PHASES)} (comma-separated), got {phases!r}")
    if trials < 0 or variants < 1:
        raise MestError(f"--trials must be >= 0 and --variants >= 1, got {trials} and {variants}")
    if (model is None) == (shape is None):
        raise MestError("give --model (with --profile or --sparsity) or one layer's --shape, not both")
    tgt = as_target(target)
    options = TuneOptions(work_dir=Path(work_dir), trials=trials, variants=variants, seed=seed,
                          measure=MeasureOptions(rpc=_rpc_target(rpc, rpc_key, rpc_timeout)))
    if shape is not None:
        if profile is not None:
            raise MestError("--profile describes a model; a --shape layer takes --sparsity")
        channels = shape.split(",")[1] if shape.count(",") == 3 else "1"
        subject = layer_subject(scheme, shape, input_shape=input_shape or f"{DEFAULT_BATCH},{channels},32,32",
                                stride=stride, padding=padding, sparsity=sparsity)
    else:
        subject = model_subject(str(model), scheme, profile=profile, sparsity=sparsity,
                                input_shape=input_shape or f"{DEFAULT_BATCH},3,32,32")
    kernels = model_kernels(subject.model, subject.example, scheme, which)
    rows = tune_kernels(tgt, kernels, options, progress=lambda line: click.echo(line, err=True))
    click.echo(format_summary(rows))
    click.echo(f"records in {work_dir} (MetaSchedule JSON database + manifest.json)")
