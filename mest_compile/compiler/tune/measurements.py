"""Where and how candidates are built and measured, one entry per preset `measure` kind.

- `local`: this machine (the host CPU, or its CUDA GPU): MetaSchedule's LocalBuilder and
  LocalRunner with our input and checking hooks.
- `rpc`: a board behind a TVM RPC tracker: cross-compiled here, measured there (RPCRunner).
- `opencl`: mobile GPUs: our OpenCL launcher on this machine's OpenCL device (`opencl_runner.py`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from mest_compile.compiler.presets import Preset
from mest_compile.compiler.tune import measure
from mest_compile.errors import MestError
from mest_compile.registry import Registry


@dataclass(frozen=True)
class RpcTarget:
    """Where remote measurements go: a TVM RPC tracker and the device key boards register under."""

    host: str
    port: int
    key: str
    session_timeout_s: int = 120


@dataclass(frozen=True)
class MeasureOptions:
    """Timeouts and repetitions shared by every measurement kind."""

    builder_timeout_s: int = 300  # a cold LocalBuilder worker alone takes ~20 s here (TVM_NOTES §0 E3)
    runner_timeout_s: int = 120
    number: int = 3  # calls per repeat, at least (min_repeat_ms raises it for short kernels)
    repeat: int = 5
    min_repeat_ms: int = 20
    rpc: RpcTarget | None = None

    def evaluator(self) -> Any:
        return ms.runner.EvaluatorConfig(number=self.number, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)


def build(mod: tvm.IRModule, target: tvm.target.Target, _params: Any = None) -> Any:
    """The builder's compile step, without MetaSchedule's 23 s import of every tensor intrinsic."""
    from tvm.driver import build as tvm_build

    return tvm_build(mod, target=target)


def export_for_board(compiler: str, rt_mod: Any) -> str:
    """Link a built candidate with the board's cross compiler (the builder's `f_export`)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="mest-tune-"), "candidate.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


class Measurement(ABC):
    """Builds candidates for a preset and measures them where the preset says."""

    @abstractmethod
    def check(self, preset: Preset, options: MeasureOptions) -> None:
        """Raise a one-line `MestError` when this machine cannot measure for `preset`."""

    @abstractmethod
    def builder(self, preset: Preset, options: MeasureOptions) -> Any:
        """A MetaSchedule builder."""

    @abstractmethod
    def runner(self, preset: Preset, options: MeasureOptions, paths: dict[str, str]) -> Any:
        """A MetaSchedule runner whose workers find each candidate's inputs in `paths`."""


class LocalMeasurement(Measurement):
    """This machine's CPU or CUDA GPU."""

    def check(self, preset: Preset, options: MeasureOptions) -> None:
        if preset.target.get("kind") == "cuda" and not tvm.cuda(0).exist:
            raise MestError(f"tuning for {preset.name!r} measures on this machine's CUDA GPU and there is none "
                            "(the CUDA kernels can still be generated: mest-compile inspect --target cuda)")

    def builder(self, preset: Preset, options: MeasureOptions) -> Any:
        return ms.builder.LocalBuilder(max_workers=1, timeout_sec=options.builder_timeout_s, f_build=build)

    def runner(self, preset: Preset, options: MeasureOptions, paths: dict[str, str]) -> Any:
        return ms.runner.LocalRunner(timeout_sec=options.runner_timeout_s, evaluator_config=options.evaluator(),
                                     **measure.runner_hooks(paths, remote=False))


class RpcMeasurement(Measurement):
    """A board behind a TVM RPC tracker; candidates are cross-compiled on this machine."""

    def check(self, preset: Preset, options: MeasureOptions) -> None:
        if options.rpc is None:
            raise MestError(f"target {preset.name!r} is measured on the device: give --rpc HOST:PORT and --rpc-key KEY "
                            "(or set TVM_TRACKER_HOST, TVM_TRACKER_PORT and TVM_TRACKER_KEY)")

    def builder(self, preset: Preset, options: MeasureOptions) -> Any:
        from mest_compile.compiler.devices.toolchain import require_cross_compiler

        export = None
        if preset.cross_compiler is not None:
            export = functools.partial(export_for_board, require_cross_compiler(preset.cross_compiler))
        return ms.builder.LocalBuilder(max_workers=1, timeout_sec=options.builder_timeout_s, f_build=build,
                                       f_export=export)

    def runner(self, preset: Preset, options: MeasureOptions, paths: dict[str, str]) -> Any:
        rpc = options.rpc
        assert rpc is not None  # `check` ran first
        config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                     session_timeout_sec=rpc.session_timeout_s)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=options.evaluator(), max_workers=1,
                                   **measure.runner_hooks(paths, remote=True))


class OpenCLMeasurement(Measurement):
    """Mobile GPUs through our OpenCL launcher on this machine's OpenCL device."""

    def check(self, preset: Preset, options: MeasureOptions) -> None:
        from mest_compile.compiler.devices.opencl import OpenCLError, devices

        try:
            found = devices()
        except OpenCLError as err:  # no ICD loader
            raise MestError(f"tuning for {preset.name!r} needs an OpenCL device here: {err}") from None
        if not found:
            raise MestError(f"tuning for {preset.name!r} needs an OpenCL device here, none was found "
                            "(on Debian, pocl-opencl-icd gives a CPU one)")

    def builder(self, preset: Preset, options: MeasureOptions) -> Any:
        from mest_compile.compiler.tune.opencl_runner import build_module, export_module

        return ms.builder.LocalBuilder(max_workers=1, timeout_sec=options.builder_timeout_s, f_build=build_module,
                                       f_export=export_module)

    def runner(self, preset: Preset, options: MeasureOptions, paths: dict[str, str]) -> Any:
        from mest_compile.compiler.tune.opencl_runner import OpenCLRunner

        return OpenCLRunner(paths, preset, options.runner_timeout_s, options.number, options.repeat)


MEASUREMENTS: Registry[Measurement] = Registry("measurement kind")
MEASUREMENTS.add("local", LocalMeasurement())
MEASUREMENTS.add("rpc", RpcMeasurement())
MEASUREMENTS.add("opencl", OpenCLMeasurement())
