"""Build the block kernels of one layer geometry for one target, once per process.

`block_kernels(geometry, target)` compiles forward, input gradient and weight gradient, runs the
correctness gate on them and caches the result under (scheme, geometry, target). A kernel set
that fails the gate is cached as failed and never returned.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import tvm

from mest_compile.compiler.formats.block import SCHEME
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.block_dgrad import block_dgrad
from mest_compile.compiler.kernels.block_fwd import block_forward
from mest_compile.compiler.kernels.block_wgrad import block_wgrad
from mest_compile.compiler.schedules.block_host import BlockTiles, schedule_dgrad, schedule_forward, schedule_wgrad
from mest_compile.compiler.target import resolve_target
from mest_compile.errors import MestError


class KernelGateError(MestError):
    """A compiled kernel disagreed with PyTorch on random data; it is never used."""


@dataclass
class BlockKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy)."""

    geometry: ConvGeometry
    target: str
    tiles: BlockTiles
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)

    def pack(self, mask, capacity: int | None = None):
        """Pack `mask` in the layout these kernels read (a `BlockFormat`)."""
        from mest_compile.compiler.formats.block import BlockFormat

        return BlockFormat.pack(mask, self.geometry, capacity, chunk_groups=self.tiles.dgrad_chunk)

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()


@dataclass
class BuildStats:
    """What the cache did in this process."""

    builds: int = 0
    reuses: int = 0
    gate_failures: int = 0
    build_seconds: float = 0.0


STATS = BuildStats()
_CACHE: dict[tuple, BlockKernels | KernelGateError] = {}
_LOCK = threading.Lock()


def compile_block_kernels(geo: ConvGeometry, target: Any = "host", tiles: BlockTiles | None = None) -> BlockKernels:
    """Compile (without gating or caching) the three block kernels of `geo`."""
    tgt = resolve_target(target)
    tiles = tiles or BlockTiles.default(geo, int(tgt.attrs.get("num-cores", 1)))
    start = time.perf_counter()
    mods = {
        "forward": schedule_forward(block_forward(geo, tiles.fwd_rows)),
        "dgrad": schedule_dgrad(block_dgrad(geo, tiles.dgrad_rows, tiles.dgrad_chunk)),
        "wgrad": schedule_wgrad(block_wgrad(geo, tiles.wgrad_cols, tiles.wgrad_slots, tiles.wgrad_images)),
    }
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return BlockKernels(
        geometry=geo,
        target=str(tgt),
        tiles=tiles,
        forward=exes["forward"]["block_fwd"],
        dgrad=exes["dgrad"]["block_dgrad"],
        wgrad=exes["wgrad"]["block_wgrad"],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
    )


def block_kernels(geo: ConvGeometry, target: Any = "host") -> BlockKernels:
    """The gated kernels of `geo` on `target`, compiled on first use and cached.

    Raises:
        KernelGateError: the kernels compiled but gave wrong results (also on every later call).
    """
    from mest_compile.compiler.gate import check_block_kernels

    tgt = resolve_target(target)
    key = (SCHEME, geo, str(tgt))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            if STATS.builds == 0 and (reason := check_thread_environment()):
                warnings.warn(reason, stacklevel=3)
            kernels = compile_block_kernels(geo, tgt)
            STATS.builds += 1
            STATS.build_seconds += kernels.build_seconds
            try:
                check_block_kernels(kernels)
                hit = kernels
            except KernelGateError as err:
                STATS.gate_failures += 1
                hit = err
            _CACHE[key] = hit
        else:
            STATS.reuses += 1
    if isinstance(hit, KernelGateError):
        raise hit
    return hit


def clear_cache() -> None:
    """Forget every compiled kernel (tests)."""
    from mest_compile.compiler import ops

    with _LOCK:
        _CACHE.clear()
        ops._FAST.clear()


def check_thread_environment() -> str | None:
    """Why PyTorch's OpenMP threads may starve the kernels' thread pool, or None.

    After a parallel PyTorch op, libgomp's workers spin (by default) while TVM's pool starts the
    kernel on the same cores; measured here, a 0.6 ms kernel then took 2-4 ms (a scheduler tick).
    `OMP_WAIT_POLICY=PASSIVE` (read when torch loads, so set it before importing torch) fixes it.
    """
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" or torch.get_num_threads() == 1:
        return None
    return (
        "OMP_WAIT_POLICY is not PASSIVE: PyTorch's spinning OpenMP threads can slow compiled "
        "kernels several-fold; set OMP_WAIT_POLICY=PASSIVE before importing torch"
    )
