"""Measuring OpenCL candidates (mali, adreno) with our own OpenCL host instead of TVM's runtime.

The PyPI TVM runtime has no OpenCL, so MetaSchedule's runners cannot launch these kernels. The
builder therefore checks that a candidate compiles for the target and hands over the scheduled
module itself (as TVM's JSON); the runner's worker process compiles it again, launches it through
`devices/opencl_tvm.py` on the machine's OpenCL device (a phone's GPU when run there, PoCL on a
CPU in the tests), checks its output against PyTorch and times it with OpenCL profiling events.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
from typing import Any

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.support.popen_pool import PopenPoolExecutor

from mest_compile.compiler.presets import Preset
from mest_compile.compiler.tune.measure import check_output, load_inputs


def build_module(mod: tvm.IRModule, target: tvm.target.Target, _params: Any = None) -> tvm.IRModule:
    """The builder's `f_build`: compile once to reject what the target cannot take, keep the module."""
    tvm.compile(mod, target=target)
    return mod


def export_module(mod: tvm.IRModule) -> str:
    """The builder's `f_export`: the scheduled module as TVM JSON (what the runner launches)."""
    path = os.path.join(tempfile.mkdtemp(prefix="mest-tune-"), "candidate.json")
    with open(path, "w") as out:
        out.write(tvm.ir.save_json(mod))
    return path


def _measure(paths: dict[str, str], preset: Preset, artifact: str, args_info: list[Any], number: int,
             repeat: int) -> list[float]:
    """Runs in the runner's worker: launch, check against PyTorch, then time `repeat` x `number` calls."""
    from mest_compile.compiler.devices.opencl_tvm import compile_opencl

    with open(artifact) as src:
        mod = tvm.ir.load_json(src.read())
    path, arrays = load_inputs(paths, args_info)
    function = compile_opencl(mod, preset)
    check_output(function(*arrays)[-1], np.load(path)["expected"])
    return [statistics.median(function.time(*arrays, number=number) for _ in range(repeat))]


@derived_object
class OpenCLRunner(ms.runner.PyRunner):
    """MetaSchedule runner for OpenCL presets: one worker process, our OpenCL launcher inside."""

    def __init__(self, paths: dict[str, str], preset: Preset, timeout_sec: float = 120, number: int = 3,
                 repeat: int = 3) -> None:
        super().__init__()
        self.measure = functools.partial(_measure, paths, preset)
        self.number, self.repeat = number, repeat
        self.pool = PopenPoolExecutor(max_workers=1, timeout=timeout_sec)

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        results = []
        for runner_input in runner_inputs:
            info = [a.as_json() for a in runner_input.args_info]
            future = self.pool.submit(self.measure, str(runner_input.artifact_path), info, self.number, self.repeat)
            try:
                results.append(LocalRunnerFuture(res=future.result(), error_message=None))
            except Exception as err:  # noqa: BLE001 - wrong result, driver error, timeout: the candidate fails
                results.append(LocalRunnerFuture(res=None, error_message=f"OpenCLRunner: {err}"))
        return results
