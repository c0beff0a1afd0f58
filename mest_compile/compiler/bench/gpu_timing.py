"""Timing on a GPU: CUDA events around each call, dense and compiled interleaved, ratio of medians.

Each call is bracketed by two events on the current stream, and the stream is synchronised once
per round, so the CPU queues work ahead as a training step does: an event pair measures the GPU's
time for the call, plus any gap while it waited for the CPU to launch it (launch-bound calls are
charged their launch cost). The whole training step is timed with `sync_each=True`: the GPU is
idle when its first event is recorded, so the step's CPU-side work counts in full.

On a CPU device the same loop runs with `time.perf_counter` (what the CPU tests exercise).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

Thunk = Callable[[], object]


class _Stopwatch:
    """Marks on the host clock; `_CudaStopwatch` puts them on the GPU's stream instead."""

    def mark(self) -> Any:
        return time.perf_counter()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return (end - start) * 1e3

    def sync(self) -> None:
        pass


class _CudaStopwatch(_Stopwatch):
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end))

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


def stopwatch(device: torch.device) -> _Stopwatch:
    """CUDA events on a CUDA device, the host clock elsewhere."""
    return _CudaStopwatch(device) if device.type == "cuda" else _Stopwatch()


def interleaved_ms(pairs: Mapping[str, tuple[Thunk, Thunk]], *, reps: int, rounds: int, device: torch.device,
                   warmup: int = 3, sync_each: bool = False) -> dict[str, tuple[list[float], list[float]]]:
    """Time each `(dense, compiled)` pair `reps * rounds` times, taking turns, after `warmup` calls each.

    The side that goes first alternates from one repetition to the next, so neither always runs on
    a cache the other warmed. The first calls also pick cuDNN's algorithms (`cudnn.benchmark`) and
    load the compiled kernels' modules: the warm-up keeps them out of the samples.

    Returns:
        key -> (dense times, compiled times), in milliseconds.
    """
    watch = stopwatch(device)
    for _ in range(warmup):
        for dense, compiled in pairs.values():
            dense()
            compiled()
    watch.sync()
    samples: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in pairs}
    for round_ in range(rounds):
        marks = []
        for rep in range(reps):
            order = (0, 1) if (round_ * reps + rep) % 2 == 0 else (1, 0)
            for key, calls in pairs.items():
                for side in order:
                    if sync_each:
                        watch.sync()
                    start = watch.mark()
                    calls[side]()
                    marks.append((key, side, start, watch.mark()))
        watch.sync()
        for key, side, start, end in marks:
            samples[key][side].append(watch.elapsed_ms(start, end))
    return samples


def summary(dense_ms: list[float], compiled_ms: list[float]) -> dict[str, float]:
    """Medians of both sides and their ratio (dense / compiled: above 1 means compiled is faster)."""
    dense, compiled = statistics.median(dense_ms), statistics.median(compiled_ms)
    return {"dense_ms": round(dense, 4), "sparse_ms": round(compiled, 4), "speedup": round(dense / compiled, 3),
            "speedup_min": round(min(dense_ms) / min(compiled_ms), 3), "samples": len(dense_ms)}
