"""Packaging: targets/ and schedules/ are package data; the training side never imports tvm.

The wheel itself is checked in tests/compile/test_wheel.py (installing it needs TVM to run a kernel).
"""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys

PRESETS = ("host", "arm", "mali", "adreno", "cuda")


def test_target_presets_are_package_data() -> None:
    files = importlib.resources.files("mest_compile.targets")
    for name in PRESETS:
        preset = json.loads((files / f"{name}.json").read_text())
        assert preset["name"] == name and "kind" in preset["target"]
    assert importlib.resources.files("mest_compile.schedules").is_dir()


def test_training_side_runs_without_tvm() -> None:
    code = (
        "import sys, torch, mest_compile as mc\n"
        "m = mc.build_model('small_cnn', num_classes=10, in_channels=1)\n"
        "mc.sparsify(m, 'block', mc.uniform_profile(m, 0.9))\n"
        "m(torch.randn(2, 1, 8, 8)).sum().backward()\n"
        "assert 'tvm' not in sys.modules, 'the training side imported tvm'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
