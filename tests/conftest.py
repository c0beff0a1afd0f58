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


def pytest_configure(config: pytest.Config) -> None:
    # Small convolutions on 2 shared cores are many times slower with torch's default thread
    # count than with one thread; tests measure correctness, not speed.
    import torch

    torch.set_num_threads(1)
