"""The compiled kernels of one (family, layer geometry, target): how every family's kernels are built.

A family supplies each kernel's unscheduled template for a choice of tiles; the target's family
(`cpu`, `gpu`) picks the template and the hand-written schedule, or a tuned MetaSchedule trace is
replayed onto the template with symbolic batch size and nonzeros; the kernels are compiled and
registered with the torch ops under a handle.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import tvm
from tvm import s_tir

from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime import ops
from mest_compile.compiler.runtime.grad_subset import GradSubset
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.target import Target

_HANDLES = itertools.count()


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
    #: What the torch ops find these kernels by (`ops.register`).
    handle: str = ""

    def __post_init__(self) -> None:
        self.handle = f"{self.family.name}#{next(_HANDLES)}"
        ops.register(self.handle, self)

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack `mask` in the layout these kernels read."""
        return self.family.pack_with(self.geometry, self.tiles, mask, capacity)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: PackedFormat,
             grad_subset: GradSubset | None = None) -> torch.Tensor:
        """`F.conv2d(x, weight * mask)` (no bias) for `fmt`'s mask, differentiable in `x` and `weight`
        (the weight gradient on `grad_subset`'s units only, when given)."""
        return ops.packed_conv2d(x, weight, fmt, self, grad_subset)

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
    target: Target,
    tiles: Any = None,
    traces: Mapping[str, s_tir.Trace] | None = None,
) -> CompiledKernels:
    """Compile (without gating or caching) a family's three kernels of `geometry`.

    Args:
        tiles: the template knobs (default: the family's hand-picked ones for the target).
        traces: tuned schedules by kernel name; the others get the hand-written schedule.
    """
    start = time.perf_counter()
    tiles, mods = schedule_kernels(family, geometry, target, tiles, traces)
    traces = traces or {}
    exes = {name: tvm.compile(mod, target=target.tvm) for name, mod in mods.items()}
    return CompiledKernels(
        family=family,
        geometry=geometry,
        target=target.key,
        tiles=tiles,
        forward=exes["forward"][family.entries["forward"]],
        dgrad=exes["dgrad"][family.entries["dgrad"]],
        wgrad=exes["wgrad"][family.entries["wgrad"]],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
        tuned=tuple(w for w in PHASES if w in traces),
    )


def schedule_kernels(family: KernelFamily, geometry: ConvGeometry, target: Target, tiles: Any = None,
                     traces: Mapping[str, s_tir.Trace] | None = None) -> tuple[Any, dict[str, tvm.IRModule]]:
    """The tiles and each kernel's scheduled module, by phase: what `compile_kernels` compiles (a
    build for another machine compiles and links them itself, `compiler/prebuilt.py`)."""
    kind = target.family
    tiles = tiles if tiles is not None else family.default_tiles(geometry, target)
    traces = traces or {}
    mods = {}
    for which in PHASES:
        func = kind.template(family, geometry, which, tiles)
        mods[which] = replay(func, traces[which]) if which in traces else kind.schedule(func, which)
    return tiles, mods


def tuned_schedules(family: KernelFamily, geometry: ConvGeometry, target: Target,
                    records: TunedChoices | None) -> tuple[Any, dict[str, tvm.IRModule], tuple[str, ...]]:
    """`schedule_kernels` with the tiles and schedules `records` tuned; also the phases they tuned."""
    tiles, traces = _tuned(records, family, geometry, target)
    return (*schedule_kernels(family, geometry, target, tiles, traces), tuple(w for w in PHASES if w in traces))


def build_kernels(family: KernelFamily, geometry: ConvGeometry, target: Target,
                  records: TunedChoices | None) -> CompiledKernels:
    """Compile `family`'s kernels of `geometry`, with the tiles and schedules `records` tuned for them."""
    return compile_kernels(family, geometry, target, *_tuned(records, family, geometry, target))


def device_forward_func(family: KernelFamily, geometry: ConvGeometry, target: Target,
                        records: TunedChoices | None) -> tvm.tirx.PrimFunc:
    """The forward kernel for `target`'s family, tuned when `records` have it (graph rewriting)."""
    kind = target.family
    tiles, traces = _tuned(records, family, geometry, target)
    if "forward" not in traces:
        return kind.forward_func(family, geometry)
    tiles = tiles if tiles is not None else family.default_tiles(geometry, target)
    func = replay(kind.template(family, geometry, "forward", tiles), traces["forward"])["main"]
    return func.with_attr("tirx.is_scheduled", True) if kind.marks_scheduled else func


def _tuned(records: TunedChoices | None, family: KernelFamily, geometry: ConvGeometry,
           target: Target) -> tuple[Any, Mapping[str, Any]]:
    """The tiles and traces `records` tuned for this build: `(None, {})` without records."""
    return records.choice(family, geometry, target) if records is not None else (None, {})
