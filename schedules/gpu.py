"""The simplest correct GPU schedule of a sparse kernel: one work item per spatial block instance.

A sparse kernel's work sits in *complete* blocks (every block iteration variable spatial, the
data-dependent loop inside the block body, TVM_NOTES §2), so binding needs no reduction handling:
fuse the loops above a block, split by the thread count, bind the outer part to `blockIdx.x` and
the inner to `threadIdx.x` (TVM_NOTES §5). It is correct on every GPU target, not tuned.
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


def bind_block(sch: s_tir.Schedule, block: str, threads: Any, pixels_outer: bool = False) -> None:
    """Fuse the loops above `block` (optionally filters innermost), split by `threads`, bind."""
    loops = sch.get_loops(sch.get_sblock(block))
    if pixels_outer and len(loops) == 4:  # (n, o, oh, ow) -> (n, oh, ow, o): neighbours share pixels
        sch.reorder(loops[0], loops[2], loops[3], loops[1])
        loops = sch.get_loops(sch.get_sblock(block))
    outer, inner = sch.split(sch.fuse(*loops), [None, threads])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")


def bind_spatial(func: tirx.PrimFunc, blocks: tuple[str, ...], threads: int = DEFAULT_THREADS) -> tirx.PrimFunc:
    """`func` with the loops above each named block fused and bound to blockIdx.x / threadIdx.x.

    The result carries `tirx.is_scheduled`, so Relax's GPU pipeline (dlight) leaves it alone.
    """
    sch = s_tir.Schedule(func)
    for name in blocks:
        bind_block(sch, name, threads)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def gpu_spaces(block: str, max_threads: int) -> list[Callable[[s_tir.Schedule], None]]:
    """The tuner's GPU design spaces of one complete block: work-item order x sampled group size.

    Adjacent work items either walk output pixels of one filter (coalesced input reads, the
    default) or the filters of one pixel (shared input, values read per filter).
    """
    choices = [t for t in THREAD_CHOICES if t <= max_threads] or [max_threads]

    def space(pixels_outer: bool) -> Callable[[s_tir.Schedule], None]:
        def apply(sch: s_tir.Schedule) -> None:
            threads = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices))
            bind_block(sch, block, threads, pixels_outer)

        return apply

    return [space(False), space(True)]
