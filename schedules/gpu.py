"""GPU schedules of a sparse kernel's one block `conv`: work items bound to its spatial loops,
and, for a weight gradient, work-group threads sharing its reduction.

A GPU kernel keeps its work in one block. Forward and input gradient kernels make it *complete*
(every block iteration variable spatial, the data-dependent loop inside the block body,
TVM_NOTES §2): binding fuses the loops above it, splits by the thread count and binds the outer
part to `blockIdx.x`, the inner to `threadIdx.x` (TVM_NOTES §5), one output (or a few, as the
kernel's body says) per work item. A weight gradient has few outputs (the kept values) and a long
reduction over batch and pixels each, so its block is a *reduction* (spatial kept values, reduced
images and pixels): a work group per kept value, its threads splitting the reduction, which TVM
lowers to a cross-thread reduction (warp shuffles on CUDA, local memory on OpenCL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import s_tir, tirx

# 64 work items per group: a multiple of NVIDIA's warp (32) and of Mali / Adreno wave sizes, and
# under every preset's `max_num_threads` (256).
DEFAULT_THREADS = 64
# Work-group sizes the tuner samples (capped by the target's limit).
THREAD_CHOICES = (32, 64, 128, 256)
# Outputs each work item of a complete block computes in turn (fewer, longer-lived groups: a
# group's launch and its index reads are paid once for several outputs; adjacent items stay on
# adjacent outputs, so loads stay coalesced).
SERIAL_CHOICES = (1, 2, 4)
_REDUCE = 2  # IterVar.CommReduce


def reduction_axes(sch: s_tir.Schedule, block: str) -> int:
    """How many of `block`'s iteration variables are reductions (they come last in our kernels)."""
    return sum(int(v.iter_type) == _REDUCE for v in sch.get(sch.get_sblock(block)).iter_vars)


def bind_block(sch: s_tir.Schedule, block: str, threads: Any, pixels_outer: bool = False, serial: Any = 1) -> None:
    """Bind `block`: spatial loops fused over work items (optionally filters innermost, each item
    computing `serial` outputs `threads` apart), or, for a reduction block, spatial loops over work
    groups and the fused reduction split over `threads`."""
    loops = sch.get_loops(sch.get_sblock(block))
    reduced = reduction_axes(sch, block)
    if reduced:
        spatial, reduction = loops[: len(loops) - reduced], loops[len(loops) - reduced :]
        _, inner = sch.split(sch.fuse(*reduction), [None, threads])
        sch.bind(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0], "blockIdx.x")
        sch.bind(inner, "threadIdx.x")
        return
    if pixels_outer and len(loops) == 4:  # (n, o, oh, ow) -> (n, oh, ow, o): neighbours share pixels
        sch.reorder(loops[0], loops[2], loops[3], loops[1])
        loops = sch.get_loops(sch.get_sblock(block))
    if isinstance(serial, int) and serial == 1:
        outer, inner = sch.split(sch.fuse(*loops), [None, threads])
    else:
        outer, _, inner = sch.split(sch.fuse(*loops), [None, serial, threads])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")


def bind_kernel(func: tirx.PrimFunc, block: str, threads: int = DEFAULT_THREADS) -> tirx.PrimFunc:
    """`func` with `block` bound (`bind_block`), marked `tirx.is_scheduled` so Relax's GPU
    pipeline (dlight) leaves it alone."""
    sch = s_tir.Schedule(func)
    bind_block(sch, block, threads)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def gpu_spaces(func: tirx.PrimFunc, block: str, max_threads: int) -> list[Callable[[s_tir.Schedule], None]]:
    """The tuner's GPU design spaces of `block`: work-group size sampled, and for complete blocks
    the outputs per work item and the work-item order (adjacent items walk output pixels of one
    filter, coalescing input reads, or the filters of one pixel, sharing its inputs)."""
    choices = [t for t in THREAD_CHOICES if t <= max_threads] or [max_threads]
    reduction = reduction_axes(s_tir.Schedule(func), block) > 0

    def space(pixels_outer: bool) -> Callable[[s_tir.Schedule], None]:
        def apply(sch: s_tir.Schedule) -> None:
            threads = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices))
            serial = 1 if reduction else sch.sample_categorical(list(SERIAL_CHOICES),
                                                                [1.0 / len(SERIAL_CHOICES)] * len(SERIAL_CHOICES))
            bind_block(sch, block, threads, pixels_outer, serial)

        return apply

    return [space(False)] if reduction else [space(False), space(True)]
