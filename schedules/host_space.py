"""Host (x86 / ARM CPU) schedules of every scheme's three kernels, and the space a tuner searches.

All four schemes' templates share one structure: a `fill` stage that builds a padded scratch
copy of the input (or of dy), a complete consumer block (`conv` / `dgrad`) over images and
tiles whose inner loops are vectorised and unrolled in the template, and for the weight gradient
a `wgrad` block over parallel slots with an optional `reduce` stage. Only legal transformations
of the outer, data-independent loops appear here: vectorisation stays inside the data-dependent
loop (TVM_NOTES §3.5), and nothing is inlined into a sparse block (§2 b).

The hand-written default is design space 0 of each kernel; the others are what the tuner adds:
the order of the consumer's tile loops (which operand stays in cache) and where the fill runs
(per image, in L2, or once for the batch with the consumer parallel over images and tiles).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx

#: The consumer block of each kernel.
CONSUMER = {"forward": "conv", "dgrad": "dgrad", "wgrad": "wgrad"}

Space = Callable[[s_tir.Schedule], None]


def _consumer_loops(sch: s_tir.Schedule, consumer: str, swap: bool) -> list[s_tir.schedule.LoopRV]:
    """The consumer's loops, its two tile loops swapped if asked (which operand stays in cache)."""
    block = sch.get_sblock(consumer)
    if swap:
        loops = sch.get_loops(block)
        sch.reorder(loops[2], loops[1])
    return list(sch.get_loops(block))


def _fill_at_image(sch: s_tir.Schedule, consumer: str, swap: bool) -> None:
    """Each image's scratch built right before use (it stays in L2); images in parallel."""
    loops = _consumer_loops(sch, consumer, swap)
    sch.compute_at(sch.get_sblock("fill"), loops[0])
    sch.parallel(loops[0])


def _fill_at_root(sch: s_tir.Schedule, consumer: str, swap: bool) -> None:
    """The whole batch's scratch first, then images and tiles in parallel (more tasks for small batches)."""
    loops = _consumer_loops(sch, consumer, swap)
    sch.parallel(sch.fuse(loops[0], loops[1]) if len(loops) > 1 else loops[0])
    sch.parallel(sch.get_loops(sch.get_sblock("fill"))[0])


def _slots(sch: s_tir.Schedule, fuse_reduce: bool) -> None:
    """Weight-gradient slots in parallel; the slot/lane reduction (if any) in parallel too."""
    (slot,) = sch.get_loops(sch.get_sblock("wgrad"))
    sch.parallel(slot)
    try:
        reduce = sch.get_sblock("reduce")
    except s_tir.schedule.ScheduleError:  # every slot owns its weights (channel): nothing to reduce
        return
    loops = sch.get_loops(reduce)
    sch.parallel(sch.fuse(*loops) if fuse_reduce and len(loops) > 1 else loops[0])


def _parallel_outer(sch: s_tir.Schedule, consumer: str, fuse: bool) -> None:
    """A kernel without a fill stage: its outer loops (fused, or the first alone) in parallel."""
    loops = sch.get_loops(sch.get_sblock(consumer))
    sch.parallel(sch.fuse(loops[0], loops[1]) if fuse and len(loops) > 1 else loops[0])


def _has_block(func: tirx.PrimFunc, name: str) -> bool:
    try:
        s_tir.Schedule(func).get_sblock(name)
    except s_tir.schedule.ScheduleError:
        return False
    return True


def _tile_loops_swappable(func: tirx.PrimFunc, consumer: str) -> bool:
    """Whether the consumer has two tile loops after the image loop, both data-parallel."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(consumer)
    iters = sch.get(block).iter_vars
    return len(sch.get_loops(block)) >= 3 and all(int(v.iter_type) == 0 for v in iters[:3])


def spaces(func: tirx.PrimFunc, which: str) -> list[Space]:
    """The design spaces of kernel `which` (forward, dgrad, wgrad); the first is the default."""
    if which == "wgrad":
        return [lambda sch: _slots(sch, False), lambda sch: _slots(sch, True)]
    consumer = CONSUMER[which]
    if not _has_block(func, "fill"):  # e.g. the block scheme's scatter input gradient
        return [lambda sch: _parallel_outer(sch, consumer, True), lambda sch: _parallel_outer(sch, consumer, False)]
    out: list[Space] = [lambda sch: _fill_at_image(sch, consumer, False)]
    swaps = (False, True) if _tile_loops_swappable(func, consumer) else (False,)
    if swaps[-1]:
        out.append(lambda sch: _fill_at_image(sch, consumer, True))
    out += [lambda sch, s=s: _fill_at_root(sch, consumer, s) for s in swaps]  # type: ignore[misc]
    return out


def schedule_host(func: tirx.PrimFunc, which: str) -> tvm.IRModule:
    """The hand-written default schedule of kernel `which`."""
    sch = s_tir.Schedule(func)
    spaces(func, which)[0](sch)
    return sch.mod


def as_generator(fns: list[Space]) -> Callable[[s_tir.Schedule], list[s_tir.Schedule]]:
    """A MetaSchedule `ScheduleFn` body: one schedule per design space (each traced from `sch`)."""

    def generate(sch: s_tir.Schedule) -> list[s_tir.Schedule]:
        out = []
        for fn in fns:
            copy = sch.copy()
            fn(copy)
            out.append(copy)
        return out

    return generate
