"""This machine's CPU: its model name (every recorded number names it) and feature flags."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux `/proc/cpuinfo`; elsewhere `platform`, no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    return model, frozenset(flags)


def cpu_name() -> str:
    """The CPU's model name."""
    return cpu_info()[0]
