"""Interleaved timing of dense/compiled pairs; the result is the ratio of medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

Thunk = Callable[[], object]


def interleaved(pairs: Mapping[str, tuple[Thunk, Thunk]], reps: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Time each (dense, compiled) pair `reps` times, alternating, after `warmup` rounds.

    Returns:
        key -> {"dense_ms", "sparse_ms" (medians), "speedup" (dense / compiled), "speedup_min"
        (best of each side: less sensitive to other processes)}.
    """
    times: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in pairs}
    for round_ in range(warmup + reps):
        for key, (dense, sparse) in pairs.items():
            for side, fn in ((0, dense), (1, sparse)):
                start = time.perf_counter()
                fn()
                if round_ >= warmup:
                    times[key][side].append(time.perf_counter() - start)
    out = {}
    for key, (dense_t, sparse_t) in times.items():
        md, ms = statistics.median(dense_t), statistics.median(sparse_t)
        out[key] = {"dense_ms": round(md * 1e3, 3), "sparse_ms": round(ms * 1e3, 3), "speedup": round(md / ms, 2),
                    "speedup_min": round(min(dense_t) / min(sparse_t), 2)}
    return out
