"""Building and timing one scheduled candidate: through MetaSchedule's builder and runner, or in this process.

The tuner's search (`tune_tasks`) always goes through MetaSchedule's builder and runner, which
isolate every candidate in worker processes (a crashing schedule cannot take the run down, and
boards measure over RPC). The paired re-measurement and the quick per-machine search only need a
candidate built and timed: `MetaScheduleBench` does it through the same builder and runner;
`InProcessBench` compiles and times in this process, about 0.1 s per candidate on the host CPU
against 3-5 s through the worker pools (measured on AMD EPYC Zen 4), which is what makes tuning on
first use affordable. Both check every candidate's output against PyTorch's before timing it.
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from mest_compile.compiler.tune import measure
from mest_compile.compiler.tune.measurements import MeasureOptions, Measurement
from mest_compile.compiler.tune.workload import TuneKernel

ProgressFn = Callable[[str], None]


@dataclass
class Variant:
    """One template variant of a kernel as a MetaSchedule workload, with its real inputs on disk."""

    kernel: TuneKernel
    tiles: Any
    module: tvm.IRModule
    shapes: list[Any]
    inputs_path: str
    signature: str
    digest: str
    flops: int


def scheduled(v: Variant, trace: s_tir.Trace) -> tvm.IRModule:
    """`v`'s workload scheduled by `trace`."""
    sch = s_tir.Schedule(v.module)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else "no message"


class CandidateBench(ABC):
    """Builds a variant under a schedule and times it, saying why when either fails."""

    def __init__(self, target: tvm.target.Target, progress: ProgressFn) -> None:
        self.target = target
        self.progress = progress

    @abstractmethod
    def build(self, v: Variant, trace: s_tir.Trace) -> Any | None:
        """The built candidate (an artifact `time` takes), or None (said why)."""

    @abstractmethod
    def time(self, v: Variant, artifact: Any) -> list[float] | None:
        """One checked measurement of a built candidate: its run times in seconds, or None (said why)."""


class MetaScheduleBench(CandidateBench):
    """Through MetaSchedule's builder and runner (worker processes, or a board over RPC)."""

    def __init__(self, target: tvm.target.Target, progress: ProgressFn, measurement: Measurement, preset: Any,
                 options: MeasureOptions) -> None:
        super().__init__(target, progress)
        self.measurement, self.preset, self.options = measurement, preset, options
        self.builder = measurement.builder(preset, options)
        self._runners: dict[tuple[str, str], Any] = {}  # one runner per input file

    def build(self, v: Variant, trace: s_tir.Trace) -> str | None:
        (built,) = self.builder.build([ms.builder.BuilderInput(scheduled(v, trace), self.target)])
        if built.error_msg:
            self.progress(f"  {v.kernel.name}: a schedule did not build: {_last_line(built.error_msg)}")
            return None
        return str(built.artifact_path)

    def time(self, v: Variant, artifact: Any) -> list[float] | None:
        key = (v.signature, v.inputs_path)
        if key not in self._runners:
            self._runners[key] = self.measurement.runner(self.preset, self.options, {v.signature: v.inputs_path})
        info = ms.arg_info.ArgInfo.from_prim_func(v.module["main"])
        device = self.target.kind.name if self.target.kind.name != "llvm" else "cpu"
        (future,) = self._runners[key].run([ms.runner.RunnerInput(artifact, device, info)])
        result = future.result()
        if result.error_msg or not result.run_secs:
            self.progress(f"  {v.kernel.name}: a measurement failed: {_last_line(result.error_msg or 'no timing')}")
            return None
        return [float(s) for s in result.run_secs]


class InProcessBench(CandidateBench):
    """Compiled and timed in this process, on this machine's CPU."""

    def __init__(self, target: tvm.target.Target, progress: ProgressFn, options: MeasureOptions) -> None:
        super().__init__(target, progress)
        self.options = options
        self.device = tvm.cpu()
        self._inputs: dict[str, tuple[list[Any], np.ndarray]] = {}

    def build(self, v: Variant, trace: s_tir.Trace) -> Any | None:
        try:  # as the runtime builds its kernels (`runtime/compiled.py`)
            return tvm.compile(scheduled(v, trace), target=self.target).mod
        except Exception as err:  # TVM raises its own error types for schedules it cannot lower
            self.progress(f"  {v.kernel.name}: a schedule did not build: {_last_line(str(err))}")
            return None

    def _arguments(self, v: Variant) -> tuple[list[Any], np.ndarray]:
        if v.inputs_path not in self._inputs:
            data = np.load(v.inputs_path)
            arrays = [data[f"arg{i}"] for i in range(len(v.shapes))]
            self._inputs[v.inputs_path] = ([tvm.runtime.tensor(a, device=self.device) for a in arrays], data["expected"])
        return self._inputs[v.inputs_path]

    def time(self, v: Variant, artifact: Any) -> list[float] | None:
        args, expected = self._arguments(v)
        function = artifact["main"]
        try:
            function(*args)
            measure.check_output(args[-1].numpy(), expected)
        except Exception as err:  # a wrong result (ValueError) or a crash inside the kernel (TVM's errors)
            self.progress(f"  {v.kernel.name}: candidate rejected: {_last_line(str(err))}")
            return None
        options = self.options
        timer = artifact.time_evaluator("main", self.device, number=options.number, repeat=options.repeat,
                                            min_repeat_ms=options.min_repeat_ms)
        # One median per measurement, as the runner's hook reports (one slow repeat must not rank).
        return [statistics.median(timer(*args).results)]
