"""`mest-compile profile`: write a per-layer sparsity profile (MEST YAML) for a model."""

from __future__ import annotations

import click

from mest_compile.cli.group import cli


@cli.command()
@click.option("--model", default="resnet32", show_default=True, help="model name")
@click.option("--kind", type=click.Choice(["uniform", "erk"]), default="uniform", show_default=True,
              help="uniform: the same sparsity everywhere; erk: Erdos-Renyi-Kernel")
@click.option("--sparsity", type=float, default=0.9, show_default=True, help="overall sparsity of the layers")
@click.option("--layers", type=click.Choice(["mest", "all"]), default="mest", show_default=True,
              help="mest: convs but the stem and 1x1 (as MEST's profiles); all: every conv")
@click.option("--num-classes", type=int, default=10, show_default=True)
@click.option("--in-channels", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="YAML file to write")
def profile(model: str, kind: str, sparsity: float, layers: str, num_classes: int, in_channels: int, out: str) -> None:
    """Generate a MEST-format profile that `train --profile` reads."""
    from mest_compile.sparsity.profile import erk_profile, save_profile, uniform_profile
    from mest_compile.train.models import build_model

    make = {"uniform": uniform_profile, "erk": erk_profile}[kind]
    generated = make(build_model(model, num_classes=num_classes, in_channels=in_channels), sparsity, layers)
    save_profile(generated, out)
    click.echo(f"wrote {len(generated)} layers to {out}")
