"""Test tiers: unit (torch only), compile (CPU TVM), emulated (qemu, PoCL), gpu (CUDA).

Tiers are selected by directory and marker; a tier whose hardware is absent is skipped with the
reason printed, never silently.
"""

from __future__ import annotations

import pathlib

import pytest

TIERS = {"compile": "compile", "emulated": "emulated", "device": "gpu"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = pathlib.Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[tier]))
