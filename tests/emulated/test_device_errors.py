"""Missing host tools fail at once with one line naming what to install (no device needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mest_compile.compiler.devices import MissingToolError, build_for_board, load_preset, provision_board
from mest_compile.compiler.devices.board_image import image_key
from mest_compile.errors import MestError


def test_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingToolError, match="qemu-aarch64 not found.*qemu-user"):
        provision_board(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-provisioned


def test_missing_cross_compiler_names_the_package(
    monkeypatch: pytest.MonkeyPatch, csr: SimpleNamespace, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingToolError, match="aarch64-linux-gnu-gcc not found.*gcc-aarch64-linux-gnu"):
        build_for_board(csr.kernel(*csr.shape), tmp_path / "k.so", "arm")


def test_presets_are_checked() -> None:
    with pytest.raises(MestError, match="unknown target preset 'nope'; known: .*arm"):
        load_preset("nope")
    with pytest.raises(MestError, match="not a CPU board"):
        build_for_board(None, "unused.so", "mali")
    assert load_preset("arm").cross_compiler == "aarch64-linux-gnu-gcc"


def test_image_key_is_stable() -> None:
    assert image_key() == image_key() and len(image_key()) == 16
