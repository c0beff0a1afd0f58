"""The compiled kernels of one (family, layer geometry, target): how every family builds them.

A family supplies each kernel's unscheduled template for a choice of tiles; this module
schedules it (the hand-written host schedule, or a tuned MetaSchedule trace replayed onto the
template with symbolic batch size and nonzeros) and compiles the three kernels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import tvm
from tvm import s_tir

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.schedules.host_space import schedule_host
from mest_compile.compiler.target import resolve_target

if TYPE_CHECKING:
    from mest_compile.compiler.families import KernelFamily, PackedFormat

#: The three kernels of every family, in the order training calls them.
KERNELS = ("forward", "dgrad", "wgrad")


@dataclass
class CompiledKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy)."""

    family: KernelFamily = field(repr=False)
    geometry: ConvGeometry
    target: str
    tiles: Any
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)
    #: The kernels scheduled from tuning records (the others use the hand-written schedule).
    tuned: tuple[str, ...] = ()

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack `mask` in the layout these kernels read."""
        return self.family.pack_with(self.geometry, self.tiles, mask, capacity)

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()


def replay(func: tvm.tirx.PrimFunc, trace: s_tir.Trace | list[Any]) -> tvm.IRModule:
    """Apply a tuned trace (recorded on a static-shape workload, module key `main`) to `func`.

    The trace names blocks and loops, not shapes, so it replays onto the template with symbolic
    batch size and nonzeros; the compiled function keeps `func`'s own symbol.
    """
    mod = tvm.IRModule({"main": func})
    sch = s_tir.Schedule(mod)
    if isinstance(trace, list):  # the JSON form a manifest pins
        s_tir.Trace.apply_json_to_schedule(trace, sch)
    else:
        trace.apply_to_schedule(sch, remove_postproc=True)
    return sch.mod


def compile_kernels(
    family: KernelFamily,
    geometry: ConvGeometry,
    target: Any = "host",
    tiles: Any = None,
    traces: Mapping[str, s_tir.Trace] | None = None,
) -> CompiledKernels:
    """Compile (without gating or caching) a family's three kernels of `geometry`.

    Args:
        tiles: the template knobs (default: the family's hand-picked ones for the target).
        traces: tuned schedules by kernel name; the others get the hand-written schedule.
    """
    tgt = resolve_target(target)
    tiles = tiles if tiles is not None else family.default_tiles(geometry, tgt)
    traces = traces or {}
    start = time.perf_counter()
    mods = {}
    for which in KERNELS:
        func = family.template(geometry, which, tiles)
        mods[which] = replay(func, traces[which]) if which in traces else schedule_host(func, which)
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return CompiledKernels(
        family=family,
        geometry=geometry,
        target=str(tgt),
        tiles=tiles,
        forward=exes["forward"][family.entries["forward"]],
        dgrad=exes["dgrad"][family.entries["dgrad"]],
        wgrad=exes["wgrad"][family.entries["wgrad"]],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
        tuned=tuple(w for w in KERNELS if w in traces),
    )
