"""Build, gate and cache the kernels of one (family, layer geometry, target, records), once per process.

`KernelCache.kernels_for(family, geometry, target)` compiles the family's forward, input-gradient
and weight-gradient kernels (with the tuning records in effect, `runtime.records`), runs the
correctness gate on them and caches the result. A kernel set that fails the gate is cached as
failed and never returned: callers fall back to the masked dense conv and say so. `CACHE` is the
process's cache; a `Trainer` or a test may hold its own. Kernels built elsewhere (cross-compiled on
a host for a board without TVM's compiler, `compiler/prebuilt.py`) are gated and served the same
way once `add`ed.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import torch

from mest_compile import openmp_passive
from mest_compile.compiler.families import KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.compiled import CompiledKernels, build_kernels
from mest_compile.compiler.runtime.gate import KernelGateError, check_kernels
from mest_compile.compiler.runtime.records import TunedChoices, current_records, records_key
from mest_compile.compiler.target import Target, as_target

#: Marks "use the records in effect" (None means: no records).
_CURRENT = object()


@dataclass
class BuildStats:
    """What a cache did."""

    builds: int = 0
    reuses: int = 0
    gate_failures: int = 0
    build_seconds: float = 0.0
    loads: int = 0  # kernel sets built elsewhere and `add`ed

    def to_dict(self) -> dict[str, float]:
        """JSON-ready counts."""
        return {"builds": self.builds, "reuses": self.reuses, "gate_failures": self.gate_failures,
                "build_seconds": round(self.build_seconds, 3), "loads": self.loads}


class KernelCache:
    """Gated kernel sets by (family, geometry, target, records), with counts of what happened."""

    def __init__(self) -> None:
        self.stats = BuildStats()
        self._entries: dict[tuple[str, ConvGeometry, str, str], CompiledKernels | KernelGateError] = {}
        self._lock = threading.Lock()

    def kernels_for(self, family: KernelFamily, geometry: ConvGeometry, target: Target,
                    records: TunedChoices | None | object = _CURRENT) -> CompiledKernels:
        """The gated kernels of `geometry` on `target`, compiled on first use and cached.

        Args:
            records: the tuning records to build with (default: those in effect, `runtime.records`).

        Raises:
            KernelGateError: the kernels compiled but gave wrong results (also on every later call).
        """
        chosen = current_records() if records is _CURRENT else records
        key = (family.name, geometry, target.key, records_key(chosen))  # type: ignore[arg-type]
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                hit = self._build(family, geometry, target, chosen)  # type: ignore[arg-type]
                self._entries[key] = hit
            else:
                self.stats.reuses += 1
        if isinstance(hit, KernelGateError):
            raise hit
        return hit

    def _build(self, family: KernelFamily, geometry: ConvGeometry, target: Target,
               records: TunedChoices | None) -> CompiledKernels | KernelGateError:
        if self.stats.builds == 0 and (reason := check_thread_environment()):
            warnings.warn(reason, stacklevel=4)
        kernels = build_kernels(family, geometry, target, records)
        self.stats.builds += 1
        self.stats.build_seconds += kernels.build_seconds
        return self._gated(kernels)

    def _gated(self, kernels: CompiledKernels) -> CompiledKernels | KernelGateError:
        try:
            check_kernels(kernels)
        except KernelGateError as err:
            self.stats.gate_failures += 1
            return err
        return kernels

    def add(self, kernels: CompiledKernels, records: TunedChoices | None = None) -> None:
        """Gate a kernel set built elsewhere and serve it for its geometry and target, as if built here.

        Its target is `kernels.target` (the key of the `Target` it was built for), so a backend on
        that target finds it without building; `records` are the records such a backend holds.

        Raises:
            KernelGateError: the kernels gave wrong results here (cached as failed, like a build).
        """
        key = (kernels.family.name, kernels.geometry, kernels.target, records_key(records))
        gated = self._gated(kernels)
        with self._lock:
            self._entries[key] = gated
            self.stats.loads += 1
        if isinstance(gated, KernelGateError):
            raise gated

    def clear(self) -> None:
        """Forget every compiled kernel (tests)."""
        with self._lock:
            self._entries.clear()


#: The process's kernel cache.
CACHE = KernelCache()


def kernels_for(family: KernelFamily, geometry: ConvGeometry, target: Target | str = "host",
                records: TunedChoices | None | object = _CURRENT) -> CompiledKernels:
    """`CACHE.kernels_for`: the process's gated kernels of `geometry` on `target` (any form `as_target` takes)."""
    return CACHE.kernels_for(family, geometry, as_target(target), records)


def check_thread_environment() -> str | None:
    """Why PyTorch's OpenMP threads may starve the kernels' thread pool, or None.

    After a parallel PyTorch op, libgomp's workers spin (by default) while TVM's pool starts the
    kernel on the same cores; measured here, a 0.6 ms kernel then took 2-4 ms (a scheduler tick).
    `OMP_WAIT_POLICY=PASSIVE` (read when torch loads, so set it before importing torch) fixes it, as
    does `torch.set_num_threads(1)` (measured: the same step time); `train --compiled` does the latter
    by itself (`quiet_torch_threads`).
    """
    if openmp_passive() or torch.get_num_threads() == 1:
        return None
    return (
        "PyTorch's OpenMP threads spin after each op (OMP_WAIT_POLICY is not PASSIVE) and can slow compiled "
        "kernels several-fold: set OMP_WAIT_POLICY=PASSIVE before importing torch, or torch.set_num_threads(1)"
    )


def quiet_torch_threads() -> int | None:
    """Run PyTorch's ops on one thread if its OpenMP workers would spin beside the kernels' pool.

    Returns the thread count to restore afterwards, or None when nothing changed. Measured on the
    block ResNet-32 step with `--compiled`: 540-546 ms with the workers spinning, 390-417 ms with
    `OMP_WAIT_POLICY=PASSIVE`, 387-391 ms on one PyTorch thread (AMD EPYC Zen 4, 2 cores).
    """
    if check_thread_environment() is None:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads
