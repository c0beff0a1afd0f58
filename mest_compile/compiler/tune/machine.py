"""Tuning on first use, per machine: each layer's tiles picked for this CPU once, then cached.

The hand-written tiles were picked on one CPU; machines of the same kind come with others (an
Intel Xeon beside an AMD EPYC), and users' machines with many more. With `--tuning quick`, the
first time a layer geometry's kernels are built on a machine, the quick search
(`TuneOptions.exhaustive`: every tile variant in every design space, built and timed in this
process, every candidate checked against PyTorch, then the hand-written schedule and the best
re-measured in pairs) picks its schedules in seconds. The result is a standard `mest-compile tune`
work dir (MetaSchedule's JSON database plus manifest) per layer geometry, under a cache folder
keyed by the CPU's model and ISA and the versions that generated the kernels:

    $MEST_COMPILE_CACHE (default ~/.cache/mest-compile)/tuning/<cpu>-<key>/<family>_<geometry>/

Every later build on the machine (`train`, `inspect`, `bench`, host `export`/`prebuild`, the
`--engine tvm` step) replays it. A layer's work dir appears in one rename when its search is
done, under a lock, so concurrent processes (data-parallel ranks) tune a geometry once. A
corrupt or foreign one is refused in one line (a warning) and searched again.
"""

from __future__ import annotations

import os
import hashlib
import json
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import tvm

from mest_compile.algorithms.compiled import check_tuning
from mest_compile.compiler.cpu import cpu_info
from mest_compile.compiler.families import KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime import records as runtime_records
from mest_compile.compiler.target import Target, as_target
from mest_compile.compiler.tune.measurements import MeasureOptions
from mest_compile.compiler.tune.records import TuningRecords
from mest_compile.compiler.tune.session import TuneOptions, Tuner
from mest_compile.compiler.tune.workload import TuneKernel
from mest_compile.errors import MestError
from mest_compile.io import atomic_directory, atomic_write_text, exclusive_lock

CACHE_ENV = "MEST_COMPILE_CACHE"
MACHINE_FILE = "machine.json"
#: What the quick search measures with: MEST's batch and sparsity (the records replay onto any
#: batch and mask, `runtime/compiled.replay`).
BATCH, SPARSITY = 64, 0.9
#: Tile variants per kernel: the hand-written tiles and their nearest neighbours.
VARIANTS = 4
#: Shorter timings than a deep tune's: the pairs are re-measured anyway.
QUICK_MEASURE = MeasureOptions(number=3, repeat=3, min_repeat_ms=10)
#: ISA extensions the generated code can use: machines that differ only elsewhere share a cache.
ISA = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "asimdhp", "asimddp", "sve",
    "sve2", "i8mm", "bf16",
})

ProgressFn = Callable[[str], None]


def cache_root() -> Path:
    """Where per-machine results live: `$MEST_COMPILE_CACHE`, else `~/.cache/mest-compile`."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "mest-compile")
    return Path(base)


@dataclass(frozen=True)
class Machine:
    """What a cached schedule was picked for: this CPU, its ISA, and what generated the kernels."""

    cpu: str
    isa: tuple[str, ...]
    target: str
    versions: str

    @property
    def folder(self) -> str:
        """The cache folder's name: the CPU's model, readable, and a digest of everything."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"{re.sub(r'[^A-Za-z0-9]+', '-', self.cpu).strip('-').lower()[:40] or 'cpu'}-{digest}"


def this_machine(target: Target) -> Machine:
    """The `Machine` whose CPU runs `target`'s kernels here."""
    cpu, flags = cpu_info()
    return Machine(cpu=cpu, isa=tuple(sorted(flags & ISA)), target=target.key,
                   versions=f"mest-compile {version('mest-compile')}, tvm {tvm.__version__}")


def layer_name(family: KernelFamily, geometry: ConvGeometry) -> str:
    """A layer geometry's folder in the machine's cache (the tuner's kernel name without the phase)."""
    return TuneKernel(family.name, geometry, "", BATCH, SPARSITY).name.removesuffix("_")


class QuickRecords:
    """Tuning records of this machine, searched on first use per layer geometry (`--tuning quick`).

    A `TunedChoices` provider like `TuningRecords`: hand it to builds (`with records:` or
    `records=`). Only kernels for the host CPU are tuned; for any other target it has no records.
    """

    def __init__(self, root: Path | None = None, progress: ProgressFn | None = None) -> None:
        self.host = as_target("host")
        self.machine = this_machine(self.host)
        self.folder = (root or cache_root()) / "tuning" / self.machine.folder
        self.key = f"quick:{self.folder}"
        # A first build that tunes takes seconds per layer: say so rather than go quiet.
        self.progress = progress if progress is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        self._records: dict[str, TuningRecords] = {}

    def choice(self, family: KernelFamily, geometry: ConvGeometry, target: Target) -> tuple[Any, dict[str, Any]]:
        """The schedules picked for `geometry` on this CPU, searched now if this machine has none yet."""
        if target.key != self.host.key or family.supports(geometry) is not None:
            return None, {}
        return self.records(family, geometry).choice(family, geometry, target)

    def records(self, family: KernelFamily, geometry: ConvGeometry) -> TuningRecords:
        """The layer's work dir in the machine's cache, searched first if missing, corrupt or foreign."""
        name = layer_name(family, geometry)
        if name not in self._records:
            self.folder.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(self.folder / ".lock"):
                self._records[name] = self._cached(name) or self._search(family, geometry, name)
        return self._records[name]

    def _cached(self, name: str) -> TuningRecords | None:
        work_dir = self.folder / name
        if not work_dir.exists():
            return None
        try:
            recorded = json.loads((work_dir / MACHINE_FILE).read_text())
        except (OSError, ValueError):
            return self._refuse(work_dir, f"its {MACHINE_FILE} is missing or unreadable")
        expected = json.loads(json.dumps(asdict(self.machine)))
        if recorded != expected:
            was = recorded if isinstance(recorded, dict) else {}
            return self._refuse(work_dir, f"it was tuned for {was.get('cpu')!r} with {was.get('versions')!r}")
        try:
            return TuningRecords(work_dir)
        except MestError:
            return self._refuse(work_dir, "its records are corrupt")

    @staticmethod
    def _refuse(work_dir: Path, reason: str) -> None:
        warnings.warn(f"refusing the cached tuning in {work_dir}: {reason}; tuning this layer again", stacklevel=6)
        shutil.rmtree(work_dir, ignore_errors=True)

    def _search(self, family: KernelFamily, geometry: ConvGeometry, name: str) -> TuningRecords:
        start = time.perf_counter()
        scheme = family.schemes[0]
        kernels = [TuneKernel(scheme, geometry, which, BATCH, SPARSITY) for which in PHASES if which in family.templates]
        work_dir = self.folder / name
        with atomic_directory(work_dir) as work:
            options = TuneOptions(work_dir=work, trials=0, variants=VARIANTS, exhaustive=True, verify_top=2,
                                  verify_rounds=2, measure=QUICK_MEASURE)
            Tuner(self.host, options).tune(kernels)
            atomic_write_text(work / MACHINE_FILE, json.dumps(asdict(self.machine), indent=1, sort_keys=True))
        self.progress(f"tuned {name} for this CPU in {time.perf_counter() - start:.0f} s (cached in {self.folder})")
        return TuningRecords(work_dir)


#: The records each `--tuning` (`algorithms.compiled.TUNINGS`) gives a run.
TUNINGS: dict[str, Callable[[ProgressFn | None], QuickRecords | None]] = {
    "off": lambda progress: None,
    "quick": lambda progress: QuickRecords(progress=progress),
}


def records_for(work_dir: str | Path | None, tuning: str = "off",
                progress: ProgressFn | None = None) -> TuningRecords | QuickRecords | None:
    """The records a run builds with: a deep `mest-compile tune` work dir, else `--tuning`'s.

    Raises:
        MestError: an unknown `tuning`, both a work dir and quick tuning, or an unreadable work dir.
    """
    check_tuning(tuning, None if work_dir is None else str(work_dir))
    if work_dir is not None:
        return TuningRecords(work_dir)
    return TUNINGS[tuning](progress)


def use_tuning(work_dir: str | Path | None, tuning: str = "off",
               progress: ProgressFn | None = None) -> TuningRecords | QuickRecords | None:
    """Put `records_for(work_dir, tuning)` in effect for the rest of the process (a run's records)."""
    records = records_for(work_dir, tuning, progress)
    runtime_records.install(records)
    return records
