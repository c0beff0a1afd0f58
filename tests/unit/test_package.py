"""Packaging: targets/ and schedules/ ship inside the package; the training side never imports tvm."""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_wheel_contains_targets_and_schedules(tmp_path: pathlib.Path) -> None:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "mest_compile", "targets", "schedules"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("mest_compile-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PRESETS:
        assert f"mest_compile/targets/{name}.json" in names
    assert "mest_compile/schedules/__init__.py" in names
    assert "mest_compile/sparsity/schemes/block.py" in names
    assert not any(n.startswith(("tests/", "targets/", "schedules/")) for n in names)
