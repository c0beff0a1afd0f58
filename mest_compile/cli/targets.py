"""`mest-compile targets`: the target presets and the TVM targets they resolve to."""

from __future__ import annotations

import json

import click

from mest_compile.cli.group import cli


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: name -> resolved TVM target")
def targets(as_json: bool) -> None:
    """List the target presets (--target also takes a TVM tag or a target dict)."""
    from mest_compile.compiler.presets import load_preset, preset_names
    from mest_compile.compiler.target import resolve_target

    resolved = {name: resolve_target(name) for name in preset_names()}
    if as_json:
        click.echo(json.dumps({name: json.loads(str(target)) for name, target in resolved.items()}))
        return
    for name, target in resolved.items():
        preset = load_preset(name)
        click.echo(f"{name:<8} {preset.description}")
        click.echo(f"{'':<8} measured: {preset.measure}; TVM target: {target}")
