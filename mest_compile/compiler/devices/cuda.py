"""CUDA without a GPU: generate CUDA C for a preset and compile it to PTX / cubin with nvcc.

`tvm.compile` for CUDA keeps CUDA C source (it is compiled when a GPU process loads the module),
so on a machine without a GPU this is how kernels are checked to compile for real, and how PTX
is produced for `inspect`. TVM's nvcc driver reads the architecture from the *current* target
even when `arch` is passed, so compilation runs inside the preset target's scope.
"""

from __future__ import annotations

import tvm
from tvm.support import nvcc

from mest_compile.compiler.presets import Preset, load_preset
from mest_compile.compiler.devices.toolchain import require_nvcc
from mest_compile.errors import MestError

FORMATS = ("ptx", "cubin", "fatbin")
_HOST = {"kind": "llvm"}  # host stubs of CUDA modules run on the machine with the GPU: x86-64 here


def _cuda_preset(preset: str | Preset) -> Preset:
    spec = preset if isinstance(preset, Preset) else load_preset(preset)
    if spec.target.get("kind") != "cuda":
        raise MestError(f"target preset {spec.name!r} is not a CUDA target")
    return spec


def cuda_source(func: tvm.tirx.PrimFunc | tvm.IRModule, preset: str | Preset = "cuda") -> str:
    """CUDA C of a GPU-scheduled PrimFunc (or IRModule) for the preset (no nvcc needed)."""
    spec = _cuda_preset(preset)
    executable = tvm.compile(func, target=spec.tvm_target(host=spec.host or _HOST))
    return str(executable.mod.imports[0].inspect_source())


def compile_cuda(source: str, fmt: str = "ptx", preset: str | Preset = "cuda", arch: str | None = None) -> bytes:
    """Compile CUDA C with nvcc for the preset's architecture (or `arch`, e.g. "sm_80").

    Raises:
        MissingToolError: nvcc is not installed (names what to install).
        MestError: an unknown format, or nvcc rejected the source (its first error line).
    """
    if fmt not in FORMATS:
        raise MestError(f"unknown CUDA binary format {fmt!r}; known: {', '.join(FORMATS)}")
    spec = _cuda_preset(preset)
    require_nvcc()
    target_spec = dict(spec.target, arch=arch) if arch else spec.target
    target = tvm.target.Target(target_spec)
    try:
        with target:
            data = nvcc.compile_cuda(source, target_format=fmt, arch=str(target.arch), compiler="nvcc")
    except RuntimeError as err:
        lines = str(err).split("Compilation error:")[-1].strip().splitlines()
        first = next((line for line in lines if "error" in line), lines[0] if lines else str(err))
        raise MestError(f"nvcc could not compile the kernel for {target.arch}: {first.strip()}") from err
    return bytes(data)
