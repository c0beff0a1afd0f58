"""The `mest-compile` click group: user errors become one line and exit status 2, never a traceback."""

from __future__ import annotations

import warnings

import click

from mest_compile.errors import MestError


class _Group(click.Group):
    """Turns user errors into one-line messages with exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MestError as exc:
            raise _UserError(str(exc)) from None


class _UserError(click.ClickException):
    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mest-compile")
def cli() -> None:
    """MEST sparse training with compiled sparse kernels."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
