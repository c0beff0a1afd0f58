"""Prebuilt kernels on this machine: `prebuild` writes a folder, `load_prebuilt` gates and serves it, no build.

The board-side run (cross-built NEON kernels under qemu) is `tests/emulated/test_board_torch_engine.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.families import family_for
from mest_compile.compiler.prebuilt import MANIFEST, Prebuilt, built_target, load_prebuilt, prebuild
from mest_compile.compiler.runtime.backend import CompiledConvBackend
from mest_compile.compiler.runtime.cache import KernelCache
from mest_compile.compiler.runtime import gate
from mest_compile.compiler.runtime.gate import KernelGateError
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model

BLOCK = family_for("block")


def block_model(seed: int, sparsity: float) -> torch.nn.Module:
    """The small CNN the kernels are prebuilt for, its convs block-sparse."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=10, in_channels=3, widths=(8, 8, 8))
    sparsify(model, "block", uniform_profile(model, sparsity, layers="all"))
    return model


def use(model: torch.nn.Module, loaded: Prebuilt, cache: KernelCache) -> None:
    """Put every sparse layer of `model` on backends of the loaded target, served from `cache`."""
    for layer in sparse_layers(model).values():
        layer.backend = CompiledConvBackend(BLOCK, loaded.target, cache=cache)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = block_model(0, 0.6)
    return prebuild(model, torch.randn(4, 3, 8, 8), "host", tmp_path_factory.mktemp("kernels")).parent


def test_manifest_names_each_geometry_once_with_its_kernels(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["target"]["key"] == as_target("host").key
    assert [e["layers"] for e in manifest["kernels"]] == [[f"features.conv{i}.weight"] for i in (1, 2, 3)]
    for entry in manifest["kernels"]:
        assert entry["family"] == "block" and entry["entries"] == {"forward": "block_fwd", "dgrad": "block_dgrad",
                                                                   "wgrad": "block_wgrad"}
        assert all((folder / name).is_file() for name in entry["files"].values())


def test_loaded_kernels_serve_backends_without_building(folder: Path) -> None:
    cache = KernelCache()
    loaded = load_prebuilt(folder, cache)
    assert cache.stats.loads == 3 and cache.stats.builds == 0
    assert all(max(k.gate_errors.values()) < 1e-5 for k in loaded.kernels)  # gated on load
    model = block_model(1, 0.5)  # other weights and masks than prebuilt: kernels depend on the geometry only
    x = torch.randn(5, 3, 8, 8)  # another batch size than prebuilt: kernels take any
    expected = model(x)
    use(model, loaded, cache)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert cache.stats.builds == 0 and cache.stats.reuses == 3


def test_prebuilt_gradients_follow_masked_dense(folder: Path) -> None:
    loaded = load_prebuilt(folder, cache := KernelCache())
    model = block_model(2, 0.6)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    use(model, loaded, cache)
    F.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-5, atol=1e-6)
    assert cache.stats.builds == 0


def test_a_kernel_set_failing_the_gate_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "_RTOL", -1.0)  # no error is small enough: every set fails
    cache = KernelCache()
    with pytest.raises(KernelGateError):
        load_prebuilt(folder, cache)
    assert cache.stats.gate_failures == 1 and cache.stats.loads == 1
    model = block_model(3, 0.6)
    loaded = built_target(json.loads((folder / MANIFEST).read_text())["target"])
    layer = sparse_layers(model)["features.conv1.weight"]
    layer.backend = CompiledConvBackend(BLOCK, loaded, cache=cache)
    with pytest.warns(UserWarning, match="failed the correctness gate"):
        layer(torch.randn(2, 3, 8, 8))  # served as failed: the masked dense conv, never a build
    assert layer.backend.stats.dense_calls == 1 and cache.stats.builds == 0

def test_the_target_is_rebuilt_without_tvm_and_keys_the_same_kernels(folder: Path) -> None:
    spec = json.loads((folder / MANIFEST).read_text())["target"]
    target = built_target(spec)
    assert target.key == as_target("host").key and target.num_cores == as_target("host").num_cores
    assert target.preset == as_target("host").preset


def test_refuses_a_folder_without_manifest_or_of_another_format(tmp_path: Path) -> None:
    with pytest.raises(MestError, match="no kernels.json"):
        load_prebuilt(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(MestError, match="format 99"):
        load_prebuilt(tmp_path)



def test_cli_prebuild_then_train_compiled_on_the_prebuilt_kernels(tmp_path: Path) -> None:
    """The user's route: `prebuild` for a target, then `train --compiled --prebuilt` (here: this machine)."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from mest_compile.cli import cli, prebuild as _  # noqa: F401  (registers the command)

    run = ["--dataset", "digits", "--model", "small_cnn", "--scheme", "block", "--sparsity", "0.75",
           "--epochs", "1", "--batch-size", "128"]
    done = CliRunner().invoke(cli, ["prebuild", *run, "--target", "host", "--out", str(tmp_path / "kernels")])
    assert done.exit_code == 0, done.output
    again = CliRunner().invoke(cli, ["prebuild", *run, "--out", str(tmp_path / "kernels")])
    assert again.exit_code == 2 and "already exists" in again.output
    # A fresh process, as on a board: the kernel cache starts empty, so a build would be counted.
    proc = subprocess.run([sys.executable, "-c", "from mest_compile.cli import main; main()", "train", *run, "--quiet",
                           "--compiled", "--prebuilt", str(tmp_path / "kernels"), "--fallback", "never",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kernels = json.loads((tmp_path / "run" / "summary.json").read_text())["kernels"]
    assert kernels["prebuilt"] == str(tmp_path / "kernels")
    assert kernels["builds"]["builds"] == 0 and kernels["builds"]["loads"] >= 1
    assert all(layer["status"] == "compiled" for layer in kernels["layers"].values()), kernels["layers"]
    wrong = subprocess.run([sys.executable, "-c", "from mest_compile.cli import main; main()", "train", *run, "--quiet",
                            "--compiled", "--prebuilt", str(tmp_path / "kernels"), "--target", "arm",
                            "--out", str(tmp_path / "run2")], capture_output=True, text=True, timeout=600, check=False)
    assert wrong.returncode == 2 and "were built for" in wrong.stderr
