"""The CUDA backend without a GPU: what it builds, and what it refuses, clearly.

Running the kernels needs a GPU (`tests/device/`); building them does not (TVM keeps CUDA C and
compiles it when a GPU process loads it), so every phase's function is looked up here by the
symbol the backend calls.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from mest_compile.compiler.families import PHASES, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime import cuda_backend
from mest_compile.compiler.runtime.cuda_backend import CudaConvBackend
from mest_compile.compiler.runtime.device_backends import device_backend, runs_on_device
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError


@pytest.mark.parametrize("scheme", ["block", "pattern", "channel", "irregular"])
def test_builds_every_phase_for_the_cuda_target(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setattr(cuda_backend, "device_target", lambda target, index=0: target)  # no GPU to ask
    backend = CudaConvBackend(family_for(scheme), "cuda")
    geo = ConvGeometry(8, 8, 8, 16, 3, 3, stride=2, padding=1)
    backend.build(geo)
    assert set(backend._kernels[geo]) == set(PHASES)


def test_routes_and_refusals_without_a_gpu() -> None:
    from mest_compile import sparse_conv2d

    cuda = as_target("cuda")
    assert runs_on_device(cuda) and runs_on_device(as_target("mali")) and not runs_on_device(as_target("host"))
    assert isinstance(device_backend(family_for("block"), cuda), CudaConvBackend)
    x, w, mask = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3), torch.ones(8, 4, 3, 3, dtype=torch.bool)
    with pytest.raises(MestError, match="takes float32 CUDA tensors"):
        sparse_conv2d(x, w, mask, scheme="block", padding=1, target="cuda")
    with pytest.raises(MestError, match="not a opencl target|not a cuda target"):
        CudaConvBackend(family_for("block"), "mali")
    if not torch.cuda.is_available():
        backend = CudaConvBackend(family_for("block"), "cuda")
        with pytest.raises(MestError, match="no CUDA GPU"):
            backend.ready(ConvGeometry(4, 6, 6, 8, 3, 3, stride=1, padding=1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: tests/device trains on it")
def test_training_on_cuda_without_a_gpu_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from mest_compile.cli import cli, train  # noqa: F401  (registers the command)

    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--compiled", "--target", "cuda",
            "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--target cuda trains on a CUDA GPU" in result.output and "Traceback" not in result.output
    assert not out.exists()  # nothing half-written
