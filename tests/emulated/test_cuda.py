"""CUDA C for the `cuda` preset, compiled to PTX and cubin with nvcc: no GPU needed."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from mest_compile.compiler.devices import MissingToolError, compile_cuda, cuda_source
from mest_compile.compiler.devices.toolchain import require_nvcc
from mest_compile.errors import MestError


@pytest.fixture
def nvcc(require_tool: Callable[[str], None]) -> None:
    """nvcc on PATH or under CUDA_HOME: skip without it, fail under CI (`make test` installs it from PyPI)."""
    try:
        require_nvcc()
    except MissingToolError as err:
        require_tool(str(err))


@pytest.fixture(scope="module")
def source(csr: SimpleNamespace) -> str:
    return cuda_source(csr.gpu_schedule(csr.kernel(*csr.shape), threads=64), "cuda")


def test_source_needs_no_nvcc(source: str) -> None:
    assert "__global__" in source and "blockIdx.x" in source


@pytest.mark.usefixtures("nvcc")
def test_ptx_and_cubin(source: str) -> None:
    ptx = compile_cuda(source, "ptx")
    assert b".target sm_90" in ptx and b".entry" in ptx
    cubin = compile_cuda(source, "cubin", arch="sm_80")
    assert cubin[:4] == b"\x7fELF"
    with pytest.raises(MestError, match="undefined"):
        compile_cuda(source + "\n__global__ void broken() { not_declared_x = 1; }\n", "ptx")


def test_missing_nvcc_names_the_toolkit(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(MissingToolError, match="nvcc not found.*CUDA toolkit"):
        compile_cuda(source, "ptx")


def test_non_cuda_preset_is_rejected(source: str) -> None:
    with pytest.raises(MestError, match="not a CUDA target"):
        compile_cuda(source, "ptx", preset="mali")


@pytest.mark.usefixtures("nvcc")
@pytest.mark.parametrize("name", ["block", "pattern", "channel", "irregular"])
def test_every_family_kernel_compiles_with_nvcc(name: str) -> None:
    """Each GPU kernel (forward, input gradient, weight gradient) as the cuda target builds it, through nvcc."""
    from mest_compile.compiler.families import PHASES, family_for
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.runtime.compiled import schedule_kernels
    from mest_compile.compiler.target import as_target

    family, target = family_for(name), as_target("cuda")
    for geo in (ConvGeometry(16, 8, 8, 16, 3, 3, stride=1, padding=1), ConvGeometry(16, 9, 9, 32, 3, 3, stride=2, padding=1)):
        _, mods = schedule_kernels(family, geo, target)
        assert set(mods) == set(PHASES)
        for which, mod in mods.items():
            source = cuda_source(mod, "cuda")
            assert "__global__" in source, which
            if which == "wgrad":  # the weight gradient reduces across a block's threads
                assert "__shfl" in source or "__syncthreads" in source, source
            assert b".entry" in compile_cuda(source, "ptx"), which
