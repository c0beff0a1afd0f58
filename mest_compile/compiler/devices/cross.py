"""Cross-compile TVM kernels for a CPU board preset and link them with the preset's cross compiler.

The exported shared library depends only on the board's libc (TVM's runtime symbols are
resolved when the board's runtime loads it), so it runs on a real board and on the emulated one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tvm
from tvm.support import cc

from mest_compile.compiler.presets import Preset, load_preset
from mest_compile.compiler.devices.toolchain import require_cross_compiler
from mest_compile.errors import MestError


def _preset(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else load_preset(preset)


def board_fcompile(preset: str | Preset = "arm") -> Any:
    """TVM's `fcompile` that links for the preset's board (e.g. for `LocalBuilder(f_export=...)`).

    Raises:
        MissingToolError: the preset's cross compiler is not installed (names the package).
    """
    spec = _preset(preset)
    if spec.cross_compiler is None:
        raise MestError(f"target preset {spec.name!r} has no cross compiler: it builds for this machine")
    return cc.cross_compiler(require_cross_compiler(spec.cross_compiler))


def export_for_board(executable: Any, path: str | Path, preset: str | Preset = "arm") -> Path:
    """Link a `tvm.compile` result into a shared library for the preset's board.

    Args:
        executable: what `tvm.compile(mod, target=...)` returned for the preset's target.
        path: the `.so` to write.
        preset: the preset whose cross compiler links it.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(out), fcompile=board_fcompile(preset))
    return out


def build_for_board(mod: tvm.IRModule | tvm.tirx.PrimFunc, path: str | Path, preset: str | Preset = "arm") -> Path:
    """Compile `mod` for the preset's CPU target and export it with the cross compiler.

    Example:
        >>> build_for_board(my_prim_func, "out/kernel.so", "arm")       # doctest: +SKIP

    Raises:
        MestError: the preset is unknown, is not a CPU (LLVM) target, or its cross compiler is
            missing.
    """
    spec = _preset(preset)
    if spec.target.get("kind") != "llvm":
        raise MestError(f"target preset {spec.name!r} is not a CPU board (kind {spec.target.get('kind')!r})")
    board_fcompile(spec)  # fail on a missing cross compiler before compiling anything
    return export_for_board(tvm.compile(mod, target=spec.tvm_target()), path, spec)
