"""Generated code of one kernel for a target, without the target's hardware.

CPU targets (LLVM): LLVM IR as the source, the target's assembly (x86-64, aarch64) as `asm`.
OpenCL targets (mali, adreno): OpenCL C; its machine code is the device driver's business.
CUDA: CUDA C, and PTX as `asm` when nvcc is installed (TVM_NOTES §6: TVM itself keeps source).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx

from mest_compile.compiler.graph.export import device_modules
from mest_compile.errors import MestError

# Device module kind -> (language of its source, file extension).
_DEVICE_SOURCES = {"cuda": ("CUDA C", "cu"), "opencl": ("OpenCL C", "cl")}


@dataclass(frozen=True)
class Code:
    """One kind of generated code, or a note saying why there is none.

    Attributes:
        language: what the text is ("LLVM IR", "aarch64 assembly", "CUDA C", "PTX", ...).
        extension: the file extension it is written with.
        text: the code, or None.
        note: why `text` is None (a missing tool, a target without such code).
    """

    language: str
    extension: str
    text: str | None = None
    note: str | None = None


def _cpu_arch(target: tvm.target.Target) -> str:
    triple = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    return triple.split("-")[0]


def generate(func: tirx.PrimFunc, target: tvm.target.Target) -> tuple[Code, Code]:
    """(source, asm) of `func` compiled alone for `target`.

    Raises:
        MestError: TVM could not compile the kernel for the target, or has no code view for its kind.
    """
    views = _VIEWS.get(target.kind.name)
    if views is None:
        raise MestError(f"no code view for {target.kind.name} targets; known: {', '.join(sorted(_VIEWS))}")
    try:
        executable = tvm.compile(func, target=target)
    except Exception as err:  # noqa: BLE001  (TVM raises many error types; the user needs one line)
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise MestError(f"TVM could not compile the kernel for {target.kind.name}: {lines[-1] if lines else err}") from err
    return views(executable, target)


def _cpu_views(executable: tvm.runtime.Executable, target: tvm.target.Target) -> tuple[Code, Code]:
    arch = _cpu_arch(target)
    return (Code("LLVM IR", "ll", executable.mod.inspect_source("ll")),
            Code(f"{arch} assembly", "s", executable.mod.inspect_source("asm")))  # fmt: skip


def _device_source(executable: tvm.runtime.Executable, target: tvm.target.Target) -> Code:
    kind = target.kind.name
    language, ext = _DEVICE_SOURCES[kind]
    device = next((m for m in device_modules(executable.mod) if m.kind == kind), None)
    if device is None:
        raise MestError(f"TVM produced no device code for {kind}")
    return Code(language, ext, str(device.inspect_source()))


def _opencl_views(executable: tvm.runtime.Executable, target: tvm.target.Target) -> tuple[Code, Code]:
    note = "OpenCL C is compiled by the device's driver when loaded: no assembly without the device"
    return _device_source(executable, target), Code("device assembly", "txt", note=note)


def _cuda_views(executable: tvm.runtime.Executable, target: tvm.target.Target) -> tuple[Code, Code]:
    from mest_compile.compiler.devices import MissingToolError, compile_cuda
    from mest_compile.compiler.presets import load_preset

    source = _device_source(executable, target)
    arch = str(target.attrs.get("arch", "")) or None
    try:
        ptx = compile_cuda(source.text or "", "ptx", load_preset("cuda"), arch=arch)
    except MissingToolError as err:
        return source, Code("PTX", "ptx", note=str(err))
    return source, Code("PTX", "ptx", ptx.decode(errors="replace"))


#: TVM target kind -> (source, asm) views of a compiled kernel: a new kind of target adds one entry.
_VIEWS = {"llvm": _cpu_views, "opencl": _opencl_views, "cuda": _cuda_views}
