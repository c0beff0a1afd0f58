"""The `mest-compile` command line: a click group (`group.py`); each command lives in its own module."""

from __future__ import annotations

import sys

from mest_compile.cli.group import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console-script entry point."""
    from mest_compile.cli import bench, export, inspect, prebuild, profile, schemes, targets, train, tune  # noqa: F401  (registers the commands)

    sys.exit(cli.main())
