"""How MetaSchedule measures a sparse candidate: real inputs, a numeric check, then timing.

MetaSchedule's default runner fills every argument with random values: for a sparse kernel
that means random index buffers and out-of-bounds gathers (TVM_NOTES §3). Its default database
callback commits every measured candidate, wrong or not, and a wrong sparse kernel is often the
fastest one (§3.5). Here the runner's workers load the variant's real arguments from an `.npz`,
run the candidate once and compare its output with PyTorch's before timing it; a candidate that
disagrees fails its run, and only candidates that ran cleanly enter the database.

The worker hooks are module-level functions bound with `functools.partial`, so they pickle into
the runner's worker processes (local, or the host side of an RPC session).
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

# float32 sums of a few hundred products (as the gate): rounding stays far below this.
RTOL = 1e-4


def signature(args: list[tuple[Any, Any]]) -> str:
    """The key of a candidate's inputs: its arguments' dtypes and shapes, `[(dtype, shape), ...]`."""
    return json.dumps([[str(dtype), [int(d) for d in shape]] for dtype, shape in args])


def _path(paths: dict[str, str], args: list[tuple[Any, Any]]) -> str:
    key = signature(args)
    if key not in paths:
        raise ValueError(f"no inputs were prepared for a kernel taking {key}")
    return paths[key]


def load_inputs(paths: dict[str, str], args_info: list[Any]) -> tuple[str, list[np.ndarray]]:
    """The `.npz` path and argument arrays of the kernel whose arguments `args_info` describes."""
    path = _path(paths, [(dtype, shape) for _, dtype, shape in args_info])  # ["TENSOR", dtype, shape]
    data = np.load(path)
    arrays = [data[f"arg{i}"] for i in range(len(args_info))]
    for index, (info, array) in enumerate(zip(args_info, arrays, strict=True)):
        _, dtype, shape = info  # ["TENSOR", dtype, shape]
        if str(dtype) != str(array.dtype) or [int(d) for d in shape] != list(array.shape):
            raise ValueError(f"argument {index}: the kernel expects {dtype}{list(shape)}, the inputs hold "
                             f"{array.dtype}{list(array.shape)}")
    return path, arrays


def _alloc_local(paths: dict[str, str], device: Any, args_info: list[Any], alloc_repeat: int) -> list[list[Any]]:
    import tvm

    _, arrays = load_inputs(paths, args_info)
    return [[tvm.runtime.tensor(a, device=device) for a in arrays] for _ in range(alloc_repeat)]


def _alloc_remote(paths: dict[str, str], session: Any, device: Any, args_info: list[Any],
                  alloc_repeat: int) -> list[list[Any]]:
    return _alloc_local(paths, device, args_info, alloc_repeat)


def check_output(got: np.ndarray, expected: np.ndarray) -> None:
    """Raise if a candidate's output is not PyTorch's (relative max error above `RTOL`)."""
    if got.shape != expected.shape:
        raise ValueError(f"wrong output shape {got.shape}, expected {expected.shape}")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(got - expected).max(initial=0.0)) / scale
    if not error <= RTOL:  # `not <=` also catches NaN
        raise ValueError(f"wrong result: relative max error {error:.3g} against PyTorch (tolerance {RTOL})")


def _evaluate_local(paths: dict[str, str], rt_mod: Any, device: Any, config: Any,
                    repeated_args: list[list[Any]]) -> list[float]:
    args = repeated_args[0]
    path = _path(paths, [(a.dtype, a.shape) for a in args])
    rt_mod[rt_mod.entry_name](*args)
    device.sync()
    check_output(args[-1].numpy(), np.load(path)["expected"])
    # One median per measurement: MetaSchedule ranks records by the mean of their run times, and
    # one slow repeat (another process, a cold page) would otherwise decide the ranking.
    return [statistics.median(run_evaluator_common(rt_mod, device, config, repeated_args))]


def _evaluate_remote(paths: dict[str, str], session: Any, rt_mod: Any, device: Any, config: Any,
                     repeated_args: list[list[Any]]) -> list[float]:
    return _evaluate_local(paths, rt_mod, device, config, repeated_args)


def runner_hooks(paths: dict[str, str], remote: bool) -> dict[str, Callable[..., Any]]:
    """`f_alloc_argument` and `f_run_evaluator` for a Local- or RPCRunner.

    Args:
        paths: the `.npz` of real inputs (and PyTorch's output) of every kernel the runner will
            see, keyed by `signature` of its arguments.
        remote: hooks for an `RPCRunner` (they take the session first).
    """
    if remote:
        return {"f_alloc_argument": functools.partial(_alloc_remote, paths),
                "f_run_evaluator": functools.partial(_evaluate_remote, paths)}
    return {"f_alloc_argument": functools.partial(_alloc_local, paths),
            "f_run_evaluator": functools.partial(_evaluate_local, paths)}


@derived_object
class AddCheckedToDatabase(ms.measure_callback.PyMeasureCallback):
    """Commit only candidates that built, ran and matched PyTorch (MetaSchedule's own commits all)."""

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list[Any], builder_results: list[Any],
              runner_results: list[Any]) -> None:
        task = task_scheduler.tasks_[task_id]
        database = task_scheduler.database_
        workload = database.commit_workload(task.ctx.mod)
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results, strict=True):
            if built.error_msg or ran.error_msg or not ran.run_secs:
                continue
            database.commit_tuning_record(ms.database.TuningRecord(
                candidate.sch.trace, workload, ran.run_secs, task.ctx.target,
                ms.arg_info.ArgInfo.from_prim_func(task.ctx.mod["main"]),
            ))


@derived_object
class Progress(ms.measure_callback.PyMeasureCallback):
    """Reports every measured batch to `report(task_id, seconds or None per candidate, error texts)`."""

    def __init__(self, report: Callable[[int, list[float | None], list[str]], None]) -> None:
        super().__init__()
        self.report = report

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list[Any], builder_results: list[Any],
              runner_results: list[Any]) -> None:
        times: list[float | None] = []
        errors: list[str] = []
        for built, ran in zip(builder_results, runner_results, strict=True):
            error = built.error_msg or ran.error_msg
            if error or not ran.run_secs:
                times.append(None)
                errors.append(str(error or "no timing"))
            else:
                secs = [float(s) for s in ran.run_secs]
                times.append(float(np.median(secs)))
        self.report(task_id, times, errors)
