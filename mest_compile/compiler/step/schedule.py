"""CPU schedules for the step's non-conv parts (batch norm, ReLU, adds, loss, optimizer), and the
pipeline that builds the step with them.

`tvm.compile`'s default pipeline neither fuses nor schedules, so each of the step's hundreds of
elementwise and reduction kernels runs as one serial loop nest. Here the step is fused (FuseOps,
FuseTIR), dlight's CPU rules take the reductions they recognise, and every other PrimFunc gets
`_ParallelLoops`: injective producers inlined into their consumers, then for each remaining
block its leading spatial loops fused and run in parallel and, for injective blocks, the
innermost chunk vectorised. The sparse kernels arrive scheduled (marked so) and are left alone.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import dlight

from mest_compile.compiler.target import Target

# Floats per vector (AVX-512; narrower ISAs split it) and per parallel task (amortises the task).
_VECTOR = 16
_TASK = 4096


class _ParallelLoops(dlight.ScheduleRule):
    """Parallel leading spatial loops, vectorised injective inner loops (see the module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool) -> s_tir.Schedule | None:  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        for inline in (True, False):  # inlining fails on some multi-output functions: then loops alone
            try:
                return self._schedule(func, inline)
            except (RuntimeError, ValueError):
                continue
        return None

    def _schedule(self, func: tirx.PrimFunc, inline: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = dlight.analysis.normalize_prim_func(sch)
        if infos is None:
            return None
        if inline:
            infos = dlight.base.common_schedules.try_inline_contiguous_spatial(sch, infos)
        for info in infos or []:
            kinds = info.dom_kind()
            loops = sch.get_loops(info.block_rv)
            leading = len(kinds) - len(kinds.lstrip("S"))
            if not loops or leading == 0:
                continue
            if info.is_injective():
                fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
                outer, inner = sch.split(fused, [None, _VECTOR])
                task, _ = sch.split(outer, [None, _TASK // _VECTOR])
                sch.parallel(task)
                sch.vectorize(inner)
            else:
                spatial = loops[:leading]
                fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
                sch.parallel(fused)
        return sch


class _Guarded(dlight.ScheduleRule):
    """A dlight rule that declines (None) where it fails, so the next rule gets the function."""

    def __init__(self, rule: dlight.ScheduleRule) -> None:
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool) -> Any:  # noqa: D102
        try:
            return self.rule.apply(func, target, tunable)
        except (RuntimeError, ValueError):
            return None


def mark_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A hand-scheduled kernel, left alone by the default schedules and never fused with its neighbours."""
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)  # 8: kOpaque


def step_pipeline(target: Target) -> Any:
    """The Relax pipeline of the step: CPU legalisation and fusion, schedules, then lowering."""
    tgt = target.tvm

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tgt:
            seq = tvm.transform.Sequential([
                *cpu_pipeline.library_dispatch_passes(tgt),
                *cpu_pipeline.legalize_passes(tgt),
                dlight.ApplyDefaultSchedule(_Guarded(dlight.cpu.Reduction()), _Guarded(dlight.cpu.GEMV()),
                                            _ParallelLoops()),
                *cpu_pipeline.dataflow_lower_passes(tgt),
                *cpu_pipeline.finalize_passes(tgt),
            ])
            return seq(mod)

    return _pipeline

