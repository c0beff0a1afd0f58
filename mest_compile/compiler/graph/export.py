"""Build a rewritten forward graph for a target and export it as a deployable shared library.

`build` compiles the whole Relax module (scheme kernels, the remaining dense operators, the VM
code) for any preset target; `export` links it into one `.so`, with the preset's cross compiler
for boards (`arm`, and the aarch64 host side of `mali` / `adreno`). A device loads it with
`tvm.runtime.load_module` and runs `relax.VirtualMachine(lib, device)["main"](x, *arguments)`,
the arguments being `Rewritten.arguments(...)` for the model's current masks.

Example:
    >>> lib = export(rewrite(trace(model, x), "arm"), "out/model.so")        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from mest_compile.compiler.presets import cross_compiler_for
from mest_compile.compiler.graph.result import Rewritten
from mest_compile.errors import MestError, last_line


def build(rewritten: Rewritten) -> Any:
    """Compile the rewritten module for the target its kernels were scheduled for.

    Raises:
        MestError: TVM could not compile it (the first line of TVM's message).
    """
    try:
        return tvm.compile(rewritten.module, target=rewritten.target)
    except Exception as err:  # noqa: BLE001  (TVM raises many error types; the user needs one line)
        raise MestError(f"TVM could not build the rewritten graph for {rewritten.target.kind.name}: "
                        f"{last_line(err)}") from err


def _cross_compiler(target: tvm.target.Target) -> str | None:
    """The cross compiler of the preset whose host code `target` runs as, or None (this machine)."""
    host = target.host if target.host is not None else target
    return cross_compiler_for(str(host.attrs.get("mtriple", "")) if host.kind.name == "llvm" else "")


def export(rewritten: Rewritten, path: str | Path, executable: Any = None) -> Path:
    """Build (unless `executable` is given) and link the rewritten module into `path`.

    Raises:
        MissingToolError: the target needs a cross compiler that is not installed.
    """
    from mest_compile.compiler.devices.toolchain import require_cross_compiler

    cross = _cross_compiler(rewritten.target)
    compiler = require_cross_compiler(cross) if cross else None  # fail before compiling anything
    executable = executable if executable is not None else build(rewritten)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if compiler is None:
        executable.export_library(str(out))
    else:
        from tvm.support import cc

        executable.export_library(str(out), fcompile=cc.cross_compiler(compiler))
    return out


def run(executable: Any, x: torch.Tensor, arguments: Sequence[torch.Tensor], device: Any = None) -> torch.Tensor:
    """Run `main(x, *arguments)` of a built (or loaded) module on `device` (default: this CPU).

    Returns the first output as a CPU tensor.
    """
    device = device if device is not None else tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    inputs = [tvm.runtime.tensor(np.ascontiguousarray(t.detach().cpu().numpy()), device=device) for t in (x, *arguments)]
    # The stateful interface returns outputs one by one, which also works over RPC (a remote
    # tuple is an opaque reference that cannot be indexed from here).
    vm.set_input("main", *inputs)
    vm.invoke_stateful("main")
    out = vm.get_outputs("main")
    first = out[0] if isinstance(out, tuple) else out  # torch.export returns a tuple
    return torch.from_numpy(first.numpy())


def device_modules(module: Any) -> Iterator[Any]:
    """Every module `module` imports, depth first (the device code of GPU targets sits below the host)."""
    for child in module.imports:
        yield child
        yield from device_modules(child)
