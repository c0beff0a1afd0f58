"""Build, gate and cache the kernels of one (scheme family, layer geometry, target), once per process.

`kernels_for(family, geometry, target)` compiles the family's forward, input-gradient and
weight-gradient kernels, runs the correctness gate on them and caches the result. A kernel set
that fails the gate is cached as failed and never returned: callers fall back to the masked
dense conv and say so.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from mest_compile.compiler.families import KernelFamily, KernelSet
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.target import resolve_target
from mest_compile.errors import MestError


class KernelGateError(MestError):
    """A compiled kernel disagreed with PyTorch on random data; it is never used."""


@dataclass
class BuildStats:
    """What the cache did in this process."""

    builds: int = 0
    reuses: int = 0
    gate_failures: int = 0
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """JSON-ready counts."""
        return {"builds": self.builds, "reuses": self.reuses, "gate_failures": self.gate_failures,
                "build_seconds": round(self.build_seconds, 3)}


STATS = BuildStats()
_CACHE: dict[tuple, KernelSet | KernelGateError] = {}
# Re-entrant: the gate runs the family's ops, which look their kernels up here while it holds the lock.
_LOCK = threading.RLock()


def family_key(family: KernelFamily) -> str:
    """The name a family's kernels are cached under."""
    return family.schemes[0] if family.schemes else type(family).__name__


def kernels_for(family: KernelFamily, geometry: ConvGeometry, target: Any = "host") -> KernelSet:
    """The gated kernels of `geometry` on `target`, compiled on first use and cached.

    Raises:
        KernelGateError: the kernels compiled but gave wrong results (also on every later call).
    """
    from mest_compile.compiler.gate import check_family

    key = (family_key(family), geometry, _target_text(target))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            if STATS.builds == 0 and (reason := check_thread_environment()):
                warnings.warn(reason, stacklevel=3)
            kernels = family.build(geometry, resolve_target(target))
            STATS.builds += 1
            STATS.build_seconds += kernels.build_seconds
            _CACHE[key] = kernels  # provisional, so the ops the gate runs find these kernels
            try:
                check_family(family, kernels)
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


def _target_text(target: Any) -> str:
    """The cache key of a target: every op call looks its kernels up, and `str(Target)` costs ~10 us."""
    try:
        return _TARGET_TEXT[target]
    except TypeError:  # a dict: not hashable, rare (the ops pass preset names or target strings)
        return str(resolve_target(target))
    except KeyError:
        text = _TARGET_TEXT[target] = str(resolve_target(target))
        return text


_TARGET_TEXT: dict[Any, str] = {}


def clear_cache() -> None:
    """Forget every compiled kernel (tests)."""
    with _LOCK:
        _CACHE.clear()


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
