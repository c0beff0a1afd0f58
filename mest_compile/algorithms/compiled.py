"""Compiled sparse kernels as a training algorithm: its settings and registration (training side).

The implementation, `mest_compile.compiler.training.CompiledKernels`, lives on the compiler side
and imports TVM; it is named here by module path and imported only when a run sets `--compiled`,
so its settings exist (as flags, YAML keys and the `compile` section) without TVM.
"""

from __future__ import annotations

from dataclasses import dataclass

from mest_compile.errors import MestError
from mest_compile.train.sections import setting
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec

FALLBACKS = ("measure", "never")
#: `--tuning`: off (the hand-written schedules), quick (picked for this CPU on first use, cached).
TUNINGS = ("off", "quick")


@dataclass(frozen=True)
class CompileConfig:
    """Which kernels the sparse layers run on (the `compile` section)."""

    # Off: masked dense convs, the oracle the compiled kernels are checked against.
    compiled: bool = setting(False, "run the sparse layers on compiled TVM kernels (forward and both gradients)")
    # The kernels run in this process, so the default is this machine.
    target: str = setting("host", "target preset of the compiled kernels")
    # Never slower than dense by default.
    fallback: str = setting("measure", "measure: a layer whose compiled kernels are slower than dense stays dense; "
                                       "never")
    work_dir: str | None = setting(None, "tuning records (a `mest-compile tune --work-dir`) the compiled kernels use")
    # Off until it pays on a CPU we measured (docs/BENCHMARKS.md, "Tuning on first use").
    tuning: str = setting("off", "quick: each layer's schedules picked for this CPU the first time it is built here "
                                 "(seconds per layer, cached per machine); off: the hand-written ones")
    # Only --engine tvm runs on a board; the torch engine's kernels run in this process.
    rpc: str | None = setting(None, "--engine tvm on a board: its TVM RPC tracker HOST:PORT, or 'emulated' for the "
                                    "project's emulated aarch64 board", text=True)
    rpc_key: str | None = setting(None, "the key the board registered under at the --rpc tracker", text=True)
    # A board whose TVM is the runtime alone cannot build: its kernels come from a host.
    prebuilt: str | None = setting(None, "--compiled with kernels built on a host for this machine "
                                         "(a `mest-compile prebuild` folder): loaded, gated, never built here",
                                   text=True)

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            known = " or ".join(repr(name) for name in FALLBACKS)
            raise MestError(f"fallback must be {known}, got {self.fallback!r}")
        check_tuning(self.tuning, self.work_dir)


def check_tuning(tuning: str, work_dir: str | None) -> None:
    """Refuse an unknown `--tuning`, or quick tuning beside a `--work-dir` of records.

    Raises:
        MestError: either, in one line.
    """
    if tuning not in TUNINGS:
        raise MestError(f"--tuning takes {' or '.join(TUNINGS)}, got {tuning!r}")
    if tuning != "off" and work_dir is not None:
        raise MestError(f"--tuning {tuning} tunes on first use, --work-dir replays a `mest-compile tune`: give one of them")


def _enabled(config: CompileConfig) -> bool:
    return config.compiled


ALGORITHMS.add("compiled", AlgorithmSpec(
    section="compile", config=CompileConfig, factory="mest_compile.compiler.training:CompiledKernels",
    enabled=_enabled, summary_defaults={"kernels": None},
))
