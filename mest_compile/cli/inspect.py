"""`mest-compile inspect`: the traced and rewritten graph, kernel TIR, generated code and statistics."""

from __future__ import annotations

import click

from mest_compile.cli.group import cli
from mest_compile.errors import MestError


@cli.command()
@click.option("--model", help="registered model to sparsify (e.g. resnet32, small_cnn)")
@click.option("--profile", help="MEST per-layer profile YAML for --model")
@click.option("--sparsity", type=float, help="uniform sparsity (default 0.9)")
@click.option("--scheme", required=True, help="sparsity scheme (e.g. block)")
@click.option("--shape", help="one layer instead of a model: weight shape O,I,KH,KW")
@click.option("--input", "input_shape", help="input shape N,C,H,W (default 1,3,32,32; a layer: 1,I,32,32)")
@click.option("--stride", type=int, default=1, show_default=True, help="stride of the --shape layer")
@click.option("--padding", type=int, default=0, show_default=True, help="padding of the --shape layer")
@click.option("--target", default="host", show_default=True, help="target preset: host, arm, mali, adreno, cuda")
@click.option("--show", multiple=True, help="graph, tir, source, asm, stats (repeatable or comma-separated) or all; "
                                            "default stats")  # fmt: skip
@click.option("--mode", type=click.Choice(["runtime", "constant"]), default="runtime", show_default=True,
              help="sparse structure as runtime parameters or baked-in constants")  # fmt: skip
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="write every artifact (and report.html) here")
@click.option("--work-dir", type=click.Path(file_okay=False), help="show the kernels tuned by `mest-compile tune` here")
@click.option("--tuning", type=click.Choice(["off", "quick"]), default="off", show_default=True,
              help="quick: show the host kernels as tuned for this CPU (searched on first use, cached per machine)")
def inspect(model: str | None, profile: str | None, sparsity: float | None, scheme: str, shape: str | None,
            input_shape: str | None, stride: int, padding: int, target: str, show: tuple[str, ...], mode: str,
            out_dir: str | None, work_dir: str | None, tuning: str) -> None:
    """Show what the compiler makes of a sparse model or layer at a target (no hardware needed).

    \b
    Examples:
      mest-compile inspect --model resnet32 --sparsity 0.9 --scheme block --target arm --show tir
      mest-compile inspect --scheme block --shape 32,16,3,3 --padding 1 --target cuda --show all --out out/
    """
    from mest_compile.compiler.inspect import (
        inspect_subject, layer_subject, model_subject, parse_show, render_text, write_artifacts,
    )  # fmt: skip

    from mest_compile.compiler.tune.machine import use_tuning

    sections = parse_show(show)
    use_tuning(work_dir, tuning)
    if (model is None) == (shape is None):
        raise MestError("give --model (with --profile or --sparsity) or one layer's --shape, not both")
    if shape is not None:
        if profile is not None:
            raise MestError("--profile describes a model; a --shape layer takes --sparsity")
        subject = layer_subject(scheme, shape, input_shape=input_shape, stride=stride, padding=padding,
                                sparsity=sparsity)  # fmt: skip
    else:
        subject = model_subject(str(model), scheme, profile=profile, sparsity=sparsity, input_shape=input_shape)
    result = inspect_subject(subject, target, mode)
    click.echo(render_text(result, sections), nl=False)
    if out_dir is not None:
        written = write_artifacts(result, out_dir)
        click.echo(f"wrote {len(written)} files to {out_dir} (open {out_dir}/report.html)")
