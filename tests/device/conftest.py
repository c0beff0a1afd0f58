"""Real-GPU tier: every test here runs kernels on a CUDA GPU through TVM's CUDA runtime, or is skipped.

Without a GPU the tier is skipped with the reason printed (`-ra`), on a developer machine and
under CI alike: CI has no GPU. On a GPU machine TVM turns CUDA C into a binary when it builds,
with NVRTC (the `cuda-python` package) or else nvcc; a machine with neither skips, saying so.
The kernels run on PyTorch's CUDA tensors through DLPack, so this tier needs a CUDA build of torch
(`benchmarks/gpu_check.sh` installs one); with the CPU build it is skipped, saying so.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest


def _has_nvrtc() -> bool:
    try:
        return importlib.util.find_spec("cuda.bindings") is not None
    except ModuleNotFoundError:  # no `cuda` package at all
        return False


@functools.cache
def missing() -> str | None:
    """Why CUDA kernels cannot run here, or None."""
    import tvm

    from mest_compile.compiler.devices import MissingToolError
    from mest_compile.compiler.devices.toolchain import require_nvcc

    if not tvm.cuda(0).exist:
        return "no CUDA GPU: TVM's CUDA runtime finds no device (it needs NVIDIA's driver, libcuda.so.1)"
    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc") == "nvrtc" and not _has_nvrtc():
        try:
            require_nvcc()
        except MissingToolError as err:
            return f"{err}; or install cuda-python for NVRTC"
    return None


@pytest.fixture(scope="session", autouse=True)
def cuda_gpu() -> Iterator[None]:
    """Skip every test of this tier without a CUDA GPU; compile with nvcc when NVRTC is absent."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        if not _has_nvrtc():
            patch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
        yield


@pytest.fixture(scope="session")
def cuda_target() -> Any:
    """The `cuda` preset, with the architecture of the GPU here (the preset's sm_90 runs on Hopper only)."""
    import tvm

    from mest_compile.compiler.target import as_target

    preset = as_target("cuda")
    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    if str(preset.tvm.attrs.get("arch", "")) == arch:
        return preset
    return as_target(dict(preset.preset.target, arch=arch))
