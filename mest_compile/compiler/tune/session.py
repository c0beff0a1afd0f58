"""One tuning run: MetaSchedule searches every kernel's variants and design spaces, measured on the target.

Per kernel, every template variant is a MetaSchedule task whose design spaces are the loop-level
schedules the target's family gives (`compiler/target_families/`: `schedules/host_space.py` on
CPUs, `schedules/gpu.py` on GPUs); the
gradient task scheduler spreads the trials over the tasks and one XGBoost cost model, trained on
every measurement, ranks the candidates. After the search, each kernel's hand-written schedule
and its best records are measured again, alternately, through the same builder and runner
(`Tuner._verify`): the hand-written median is the "untuned" time, and the pinned schedule is
never slower than it.

The runner's hooks find a candidate's real inputs by its argument signature; variants whose
inputs differ but whose signatures coincide go to separate rounds.

The quick search (`TuneOptions.exhaustive`, the per-machine tuning on first use) skips the
evolutionary search: every variant in every design space is built and timed once in this process
(`candidates.InProcessBench`), then paired re-measurement picks as above. Its records are the same
MetaSchedule database and manifest.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from mest_compile.compiler.families import KernelFamily, family_for
from mest_compile.compiler.target import Target
from mest_compile.schedules.host_space import Space, as_generator
from mest_compile.compiler.tune import measure
from mest_compile.compiler.tune.candidates import CandidateBench, InProcessBench, MetaScheduleBench, Variant
from mest_compile.compiler.tune.measurements import MEASUREMENTS, MeasureOptions
from mest_compile.compiler.tune.records import (
    empty_manifest,
    geometry_dict,
    open_database,
    read_manifest,
    trace_json,
    write_manifest,
)
from mest_compile.compiler.tune.workload import (
    TuneKernel,
    inputs,
    kernel_fields,
    shapes_of,
    variants,
    workload,
)
from mest_compile.errors import MestError


@dataclass
class TuneOptions:
    """How one run searches and measures."""

    work_dir: Path
    trials: int  # the records' total over all kernels of the run: a re-run only adds what is missing
    variants: int = 8  # template variants per kernel (where the target family searches them: CPUs)
    seed: int = 0
    # Every variant x design space measured once instead of MetaSchedule's evolutionary search (with
    # `trials` ignored): the quick per-machine tuning, a few dozen candidates per layer at most.
    exhaustive: bool = False
    # Paired re-measurement of the hand-written schedule and the best records (`Tuner._verify`).
    verify_top: int = 3
    verify_rounds: int = 3
    measure: MeasureOptions = field(default_factory=MeasureOptions)


@dataclass
class KernelResult:
    """The summary row of one kernel."""

    kernel: TuneKernel
    untuned_s: float | None
    tuned_s: float | None
    trials: int
    best_tiles: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[str], None]


@contextmanager
def _without_tensor_intrinsics() -> Iterator[None]:
    """Let `TuneContext` skip importing TVM's tensor intrinsics (23 s here, CUDA's 15 s of it).

    Sparse schedules tensorize nothing; when the module is already imported this does nothing.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        sys.modules.pop(name, None)


def _median(seconds: Any) -> float:
    values = sorted(float(s) for s in seconds)
    return values[len(values) // 2]


class Tuner:
    """Tunes a list of kernels on one target into one work dir (resumable)."""

    def __init__(self, target: Target, options: TuneOptions, progress: ProgressFn | None = None) -> None:
        preset = target.preset
        self.measurement = MEASUREMENTS.get(preset.measure)
        self.measurement.check(preset, options.measure)
        self.preset = preset
        self.where = target
        self.target = target.tvm
        self.kind = target.family
        self.options = options
        self.progress = progress or (lambda line: None)
        self.work_dir = options.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(self.work_dir)
        if manifest is not None and manifest["target"] != str(self.target):
            raise MestError(f"{self.work_dir} holds records for {manifest['target']}, not {self.target}: "
                            "use another --work-dir")
        self.manifest = manifest or empty_manifest(str(self.target))
        self.database = open_database(self.work_dir, create=True)
        self.inputs_dir = self.work_dir / "inputs"

    # ---- what is searched ---------------------------------------------------------------------
    def _spaces(self, v: Variant) -> list[Space]:
        return self.kind.spaces(v.module["main"], v.kernel.which, self.where)

    def _default(self, v: Variant) -> s_tir.Schedule:
        """The hand-written schedule of `v`, traced (what training and export use untuned)."""
        sch = s_tir.Schedule(v.module)
        self.kind.default_schedule(sch, v.kernel.which)
        return sch

    def _variants(self, family: KernelFamily, kernel: TuneKernel) -> list[Variant]:
        default = family.default_tiles(kernel.geometry, self.where)
        searched = self.kind.searches_variants
        choices = variants(family, kernel, default, self.options.variants) if searched else [default]
        out = []
        for tiles in choices:
            data = inputs(family, kernel, tiles, seed=self.options.seed, kind=self.kind)
            shapes = shapes_of(data.args)
            # The inputs proper: the last argument is the output, whose contents do not matter.
            digest = hashlib.sha1(b"".join(a.contiguous().numpy().tobytes() for a in data.args[:-1])).hexdigest()
            path = data.save(self.inputs_dir / f"{kernel.name}-{digest[:12]}.npz")
            module = workload(family, kernel, tiles, shapes, data.flops, self.kind)
            out.append(Variant(kernel, tiles, module, shapes, str(path),
                                measure.signature([(d, s) for s, d in shapes]), digest, data.flops))
        return out

    def _kernels(self, kernels: list[TuneKernel]) -> tuple[dict[str, list[Variant]], dict[str, KernelFamily]]:
        by_kernel: dict[str, list[Variant]] = {}
        families: dict[str, KernelFamily] = {}
        for kernel in kernels:
            family = families.setdefault(kernel.scheme, family_for(kernel.scheme))
            reason = family.supports(kernel.geometry) or self._unsupported(family, kernel)
            if reason is not None:
                self.progress(f"  skipping {kernel.name}: {reason}")
                continue
            by_kernel[kernel.name] = self._variants(family, kernel)
        if not by_kernel:
            raise MestError("nothing to tune: none of the kernels can be compiled for this target")
        return by_kernel, families

    def _unsupported(self, family: KernelFamily, kernel: TuneKernel) -> str | None:
        return self.kind.untunable(kernel.which) or self.kind.unsupported(family, kernel.which)

    @staticmethod
    def _rounds(all_variants: list[Variant]) -> list[list[Variant]]:
        """Split variants so that within a round one signature always means the same inputs."""
        rounds: list[tuple[dict[str, str], list[Variant]]] = []
        for v in all_variants:
            for seen, members in rounds:
                if seen.get(v.signature, v.digest) == v.digest:
                    seen[v.signature] = v.digest
                    members.append(v)
                    break
            else:
                rounds.append(({v.signature: v.digest}, [v]))
        return [members for _, members in rounds]

    # ---- measuring ----------------------------------------------------------------------------
    def _verify(self, vs: list[Variant], bench: CandidateBench, top: int = 3, rounds: int = 3) -> None:
        """Pick each kernel's schedule from paired measurements: the hand-written one and the best records.

        A search measures every candidate once, at different moments; on a shared machine a
        lucky (or unlucky) moment decides more than the schedule. So the hand-written schedule
        and the `top` best records are measured again, alternately, `rounds` times, and the
        fastest median is pinned in the manifest with both times. The paired measurements enter
        the database too, so it holds the hand-written schedule and every pinned one.
        """
        kernel = vs[0].kernel
        # `variants` puts the hand-written tiles first; candidate 0 is the hand-written schedule.
        candidates: list[tuple[int, s_tir.Trace]] = [(0, self._default(vs[0]).trace)]
        ranked = []
        for i, v in enumerate(vs):
            if self.database.has_workload(v.module):
                for record in self.database.get_top_k(self.database.commit_workload(v.module), top):
                    ranked.append((_median(record.run_secs), i, record.trace))
        seen = {(i, str(t)) for i, t in candidates}
        for _, i, trace in sorted(ranked, key=lambda r: r[0]):
            if len(candidates) > top or (i, str(trace)) in seen:
                continue
            seen.add((i, str(trace)))
            candidates.append((i, trace))
        built = [(i, trace, bench.build(vs[i], trace)) for i, trace in candidates]
        times: dict[int, list[float]] = {k: [] for k in range(len(built))}
        for _ in range(rounds):
            for k, (i, _, artifact) in enumerate(built):
                secs = bench.time(vs[i], artifact) if artifact is not None else None
                if secs is not None:
                    times[k].append(_median(secs))
        medians = {k: _median(t) for k, t in times.items() if t}
        for k, secs in times.items():
            if secs:
                i, trace, _ = built[k]
                self.database.commit_tuning_record(ms.database.TuningRecord(
                    trace, self.database.commit_workload(vs[i].module), secs, self.target,
                    ms.arg_info.ArgInfo.from_prim_func(vs[i].module["main"])))
        if not medians:
            return
        entry = self._entry(kernel)
        if 0 in medians:
            entry["untuned_s"] = medians[0]
        chosen = min(medians, key=lambda k: medians[k])
        index, trace, _ = built[chosen]
        entry.update(best=index, tuned_s=medians[chosen], trace=trace_json(trace))
        base = f"untuned {1e6 * entry['untuned_s']:.1f} us, " if entry.get("untuned_s") else ""
        self.progress(f"  {kernel.name}: {base}tuned {1e6 * medians[chosen]:.1f} us (paired re-measurement)")

    def _best(self, v: Variant) -> tuple[float | None, int]:
        """Median time of `v`'s best record and how many records it has."""
        if not self.database.has_workload(v.module):
            return None, 0
        wl = self.database.commit_workload(v.module)
        top = self.database.get_top_k(wl, 1)
        count = len(self.database.get_top_k(wl, 10_000))
        return (_median(top[0].run_secs) if top else None), count

    # ---- the run ------------------------------------------------------------------------------
    def tune(self, kernels: list[TuneKernel]) -> list[KernelResult]:
        """Search every kernel; returns the summary rows (also written to the manifest)."""
        try:
            by_kernel, families = self._kernels(kernels)
            if self.options.exhaustive:
                return self._enumerate(by_kernel, families)
            done = sum(self._best(v)[1] for vs in by_kernel.values() for v in vs)
            budget = max(0, self.options.trials - done)
            self.progress(f"{len(by_kernel)} kernels, {sum(map(len, by_kernel.values()))} variants; "
                          f"{done} trials in {self.work_dir} already, {budget} to run")
            rounds = self._rounds([v for vs in by_kernel.values() for v in vs])
            bench = MetaScheduleBench(self.target, self.progress, self.measurement, self.preset, self.options.measure)
            progress = _Progress(self.progress, budget)
            searched = budget > 0
            for index, members in enumerate(rounds):
                share = budget * len(members) // max(1, sum(map(len, rounds[index:])))
                budget -= share
                self._round(members, bench.builder, share, progress)
            for vs in by_kernel.values():
                if searched or "trace" not in self._entry(vs[0].kernel):
                    self._verify(vs, bench, self.options.verify_top, self.options.verify_rounds)
            return self._summarise(by_kernel, families)
        finally:
            shutil.rmtree(self.inputs_dir, ignore_errors=True)  # regenerated (seeded) on a re-run

    def _enumerate(self, by_kernel: dict[str, list[Variant]], families: dict[str, KernelFamily]) -> list[KernelResult]:
        """Measure every variant in every design space once (checked), then pick by paired re-measurement.

        Kernels the work dir already pinned are left as they are: a re-run measures only new layers.
        """
        bench = InProcessBench(self.target, self.progress, self.options.measure)
        for vs in by_kernel.values():
            if "trace" in self._entry(vs[0].kernel):
                continue
            for v in vs:
                committed = self.database.commit_workload(v.module)
                info = ms.arg_info.ArgInfo.from_prim_func(v.module["main"])
                for space in self._spaces(v):
                    sch = s_tir.Schedule(v.module)
                    space(sch)
                    artifact = bench.build(v, sch.trace)
                    secs = bench.time(v, artifact) if artifact is not None else None
                    if secs is not None:  # the runner checked the output against PyTorch's
                        self.database.commit_tuning_record(
                            ms.database.TuningRecord(sch.trace, committed, secs, self.target, info))
            self._verify(vs, bench, self.options.verify_top, self.options.verify_rounds)
        return self._summarise(by_kernel, families)

    def _round(self, members: list[Variant], builder: Any, trials: int, progress: _Progress) -> None:
        if trials <= 0:
            return
        runner = self.measurement.runner(self.preset, self.options.measure, {v.signature: v.inputs_path for v in members})
        with _without_tensor_intrinsics():
            contexts = [
                ms.TuneContext(
                    mod=v.module, target=self.target, task_name=f"{v.kernel.name}#{i}", num_threads=1,
                    rand_state=self.options.seed + i,
                    space_generator=ms.space_generator.ScheduleFn(as_generator(self._spaces(v)), sch_rules=[],
                                                                  postprocs=[], mutator_probs={}),
                    search_strategy=ms.search_strategy.EvolutionarySearch(population_size=8, init_min_unmeasured=1),
                )
                for i, v in enumerate(members)
            ]
        ms.tune_tasks(
            tasks=contexts, task_weights=[1.0] * len(contexts), work_dir=str(self.work_dir),
            max_trials_global=trials, max_trials_per_task=16, num_trials_per_iter=4,
            builder=builder, runner=runner, database=self.database, cost_model="xgb",
            measure_callbacks=[measure.AddCheckedToDatabase(), ms.measure_callback.RemoveBuildArtifact(),
                               ms.measure_callback.UpdateCostModel(),
                               measure.Progress(lambda task, times, errors: progress.report(
                                   members[task].kernel.name, times, errors))],
        )

    def _entry(self, kernel: TuneKernel) -> dict[str, Any]:
        entry = self.manifest["kernels"].setdefault(kernel.name, {})
        entry.update({
            "name": kernel.name, "scheme": kernel.scheme, "which": kernel.which, "geometry": geometry_dict(kernel.geometry),
            "batch": kernel.batch, "sparsity": kernel.sparsity, "layers": list(kernel.layers),
        })
        entry.setdefault("untuned_s", None)
        return entry

    def _summarise(self, by_kernel: dict[str, list[Variant]], families: dict[str, KernelFamily]) -> list[KernelResult]:
        rows = []
        for vs in by_kernel.values():
            kernel = vs[0].kernel
            family = families[kernel.scheme]
            entry = self._entry(kernel)
            timed = [self._best(v) for v in vs]
            entry["variants"] = [{"tiles": kernel_fields(family, kernel, v.tiles) if self.kind.searches_variants else {},
                                  "flops": v.flops,
                                  "shapes": [[list(s), d] for s, d in v.shapes]} for v in vs]
            if "trace" not in entry:  # not re-measured (every measurement failed): the records' best
                ranked = sorted((t, i) for i, (t, _) in enumerate(timed) if t is not None)
                entry["best"] = ranked[0][1] if ranked else None
                entry["tuned_s"] = ranked[0][0] if ranked else None
            entry["trials"] = sum(count for _, count in timed)
            best_tiles = entry["variants"][entry["best"]]["tiles"] if entry.get("best") is not None else {}
            rows.append(KernelResult(kernel, entry.get("untuned_s"), entry["tuned_s"], entry["trials"], best_tiles))
        write_manifest(self.work_dir, self.manifest)
        return rows


class _Progress:
    """One line per measured batch: trials so far and each kernel's best time so far."""

    def __init__(self, emit: ProgressFn, total: int) -> None:
        self.emit, self.total, self.count = emit, total, 0
        self.best: dict[str, float] = {}

    def report(self, kernel: str, times: list[float | None], errors: list[str]) -> None:
        self.count += len(times)
        for t in times:
            if t is not None and t < self.best.get(kernel, float("inf")):
                self.best[kernel] = t
        for error in errors:
            self.emit(f"  {kernel}: candidate rejected: {error.strip().splitlines()[-1][:160]}")
        best = self.best.get(kernel)
        shown = f"best {1e6 * best:.1f} us" if best is not None else "no valid candidate yet"
        self.emit(f"[{min(self.count, self.total)}/{self.total}] {kernel}: {shown}")


def tune_kernels(target: Target, kernels: list[TuneKernel], options: TuneOptions,
                 progress: ProgressFn | None = None) -> list[KernelResult]:
    """Tune `kernels` for `target` into `options.work_dir` (see `Tuner`)."""
    start = time.perf_counter()
    rows = Tuner(target, options, progress).tune(kernels)
    if progress is not None:
        progress(f"tuned in {time.perf_counter() - start:.0f} s")
    return rows

