"""The simplest correct GPU schedule of a sparse kernel: one work item per spatial block instance.

A sparse kernel's work sits in *complete* blocks (every block iteration variable spatial, the
data-dependent loop inside the block body, TVM_NOTES §2), so binding needs no reduction handling:
fuse the loops above a block, split by the thread count, bind the outer part to `blockIdx.x` and
the inner to `threadIdx.x` (TVM_NOTES §5). It is correct on every GPU target, not tuned.
"""

from __future__ import annotations

from tvm import s_tir, tirx

# 64 work items per group: a multiple of NVIDIA's warp (32) and of Mali / Adreno wave sizes, and
# under every preset's `max_num_threads` (256).
DEFAULT_THREADS = 64


def bind_spatial(func: tirx.PrimFunc, blocks: tuple[str, ...], threads: int = DEFAULT_THREADS) -> tirx.PrimFunc:
    """`func` with the loops above each named block fused and bound to blockIdx.x / threadIdx.x.

    The result carries `tirx.is_scheduled`, so Relax's GPU pipeline (dlight) leaves it alone.
    """
    sch = s_tir.Schedule(func)
    for name in blocks:
        fused = sch.fuse(*sch.get_loops(sch.get_sblock(name)))
        outer, inner = sch.split(fused, [None, threads])
        sch.bind(outer, "blockIdx.x")
        sch.bind(inner, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
