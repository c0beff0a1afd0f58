"""`mest-compile schemes`: the registered sparsity schemes."""

from __future__ import annotations

import click

from mest_compile.cli.group import cli


@cli.command()
def schemes() -> None:
    """List the sparsity schemes (and aliases) that --scheme accepts."""
    from mest_compile.sparsity.schemes import SCHEMES

    aliases: dict[str, list[str]] = {}
    for alias, name in SCHEMES.aliases().items():
        aliases.setdefault(name, []).append(alias)
    for name in SCHEMES.names():
        scheme = SCHEMES.get(name)
        doc = (type(scheme).__doc__ or "").strip().splitlines()[0] if type(scheme).__doc__ else ""
        also = f" (alias: {', '.join(aliases[name])})" if name in aliases else ""
        click.echo(f"{name:<28} {doc}{also}")
    click.echo("\nParts joined with '+' apply in sequence on the live weight, e.g. pattern+filter_balance.")
