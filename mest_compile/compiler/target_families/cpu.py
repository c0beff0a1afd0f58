"""CPU targets (the host, ARM boards): every phase, host schedules, tile variants searched."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tvm
from tvm import s_tir, tirx

from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.target_families import TARGET_FAMILIES, TargetFamily
from mest_compile.schedules.host_space import schedule_host, spaces

if TYPE_CHECKING:
    from mest_compile.compiler.families import KernelFamily
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.target import Target


class CpuFamily(TargetFamily):
    """LLVM CPU targets: the families' host templates with the tile knobs the tuner varies."""

    name = "cpu"
    searches_variants = True

    def phases(self, family: KernelFamily) -> tuple[str, ...]:
        return tuple(w for w in PHASES if w in family.templates)

    def template(self, family: KernelFamily, geometry: ConvGeometry, which: str, tiles: Any) -> tirx.PrimFunc:
        self.require(family, which)
        return family.templates[which](geometry, tiles)

    def schedule(self, func: tirx.PrimFunc, which: str) -> tvm.IRModule:
        return schedule_host(func, which)

    def spaces(self, func: tirx.PrimFunc, which: str, target: Target) -> list[Any]:
        return spaces(func, which)

    def default_schedule(self, sch: s_tir.Schedule, which: str) -> None:
        spaces(sch.mod["main"], which)[0](sch)


TARGET_FAMILIES.add("cpu", CpuFamily())
