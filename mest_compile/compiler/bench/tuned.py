"""Tuned vs untuned kernels: every kernel set of a work dir (or of `--tuning quick`) against the hand-written one.

For each tuned (scheme, layer geometry) the hand-written kernels and the ones replayed from the
records are built side by side, both pass the correctness gate, and each phase (forward, input
gradient, weight gradient, with what training pays around the kernel) is timed alternately on
the same data; speedup = untuned median / tuned median.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mest_compile.compiler.bench.layers import distinct_layers
from mest_compile.compiler.bench.phases import phase_calls
from mest_compile.compiler.bench.timing import interleaved
from mest_compile.compiler.cpu import cpu_name
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.cache import kernels_for, quiet_torch_threads
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.target import Target, as_target, threads
from mest_compile.compiler.tune.machine import QuickRecords
from mest_compile.compiler.tune.records import TuningRecords
from mest_compile.compiler.tune.workload import TuneKernel, layer_data
from mest_compile.errors import MestError

PHASES = {"forward": "fwd", "dgrad": "dgrad", "wgrad": "wgrad"}


@dataclass(frozen=True)
class TunedLayer:
    """One layer geometry to compare: the kernels' scheme and the data they are timed on."""

    scheme: str
    geometry: ConvGeometry
    name: str
    count: int  # the model's layers that share it
    batch: int
    sparsity: float


def run_tuned_bench(work_dir: str, reps: int = 30, seed: int = 0) -> dict[str, Any]:
    """Benchmark the records of `work_dir` (tuned on this machine) against the hand-written kernels."""
    records = TuningRecords(work_dir)
    target = as_target("host")
    if target.key != records.target:
        raise MestError(f"{work_dir} was tuned for {records.target}; tuned-vs-untuned runs on this machine "
                        f"({target})")
    layers: dict[tuple[str, ConvGeometry], TunedLayer] = {}
    for entry in records.manifest["kernels"].values():
        geo = ConvGeometry(**entry["geometry"])
        if entry.get("best") is not None and (entry["scheme"], geo) not in layers:
            names = entry["layers"]
            layers[entry["scheme"], geo] = TunedLayer(entry["scheme"], geo, names[0] if names else str(geo),
                                                      len(names) or 1, int(entry["batch"]), float(entry["sparsity"]))
    if not layers:
        raise MestError(f"{work_dir} holds no tuned kernel")
    return compare_records(records, str(work_dir), list(layers.values()), reps, seed)


def run_quick_bench(scheme: str, sparsity: float, model: str, batch: int, image: tuple[int, int, int],
                    reps: int = 30, seed: int = 0) -> dict[str, Any]:
    """Quick-tune `model`'s layers for this CPU (cached per machine) and time them against the hand-written kernels."""
    records = QuickRecords()
    family = family_for(scheme)
    layers = [TunedLayer(scheme, case.geometry, case.name, case.count, batch, sparsity)
              for case in distinct_layers(model, scheme, batch, image)]
    for layer in layers:
        records.records(family, layer.geometry)  # searched now if this machine has none yet
    return compare_records(records, f"--tuning quick, {records.folder}", layers, reps, seed)


def compare_records(records: TunedChoices, label: str, layers: list[TunedLayer], reps: int,
                    seed: int) -> dict[str, Any]:
    """Each layer's kernels built with `records` against the hand-written ones, interleaved."""
    quiet_torch_threads()  # as compiled training does: PyTorch's workers must not spin beside the kernels
    target = as_target("host")
    rows = [_layer(records, target, layer, reps, seed) for layer in layers]
    untuned = sum(r["count"] * r["untuned_ms"] for r in rows)
    tuned = sum(r["count"] * r["tuned_ms"] for r in rows)
    return {"work_dir": label, "target": target.key, "cpu": cpu_name(), "threads": threads(), "layers": rows,
            "total": {"untuned_ms": round(untuned, 3), "tuned_ms": round(tuned, 3),
                      "speedup": round(untuned / tuned, 2)}}


def _layer(records: TunedChoices, target: Target, layer: TunedLayer, reps: int, seed: int) -> dict[str, Any]:
    family = family_for(layer.scheme)
    geo = layer.geometry
    # Both sets are built and gated by the build cache, which keys them by the records they used.
    untuned = kernels_for(family, geo, target, records=None)
    tuned = kernels_for(family, geo, target, records=records)
    x, w, mask, dy = layer_data(TuneKernel(layer.scheme, geo, "forward", layer.batch, layer.sparsity), seed)
    calls = {name: phase_calls(x, w, dy, kernels.pack(mask), kernels) for name, kernels in
             (("untuned", untuned), ("tuned", tuned))}
    pairs = {PHASES[which]: (calls["untuned"][PHASES[which]], calls["tuned"][PHASES[which]]) for which in PHASES}
    timing = interleaved(pairs, reps)
    phases = {key: {"untuned_ms": t["dense_ms"], "tuned_ms": t["sparse_ms"], "speedup": t["speedup"]}
              for key, t in timing.items()}
    untuned_ms = sum(p["untuned_ms"] for p in phases.values())
    tuned_ms = sum(p["tuned_ms"] for p in phases.values())
    return {"scheme": layer.scheme, "layer": layer.name, "count": layer.count, "geometry": dataclasses.asdict(geo),
            "tuned": list(tuned.tuned), "tiles": str(tuned.tiles), "phases": phases,
            "untuned_ms": round(untuned_ms, 3), "tuned_ms": round(tuned_ms, 3),
            "speedup_total": round(untuned_ms / tuned_ms, 2)}


def format_tuned_bench(result: dict[str, Any]) -> str:
    """A table: per layer and phase, untuned and tuned milliseconds and their ratio."""
    lines = [f"tuned vs untuned kernels ({result['work_dir']}, {result['threads']} threads)",
             f"{'layer':24} {'x':>3} {'fwd':>21} {'dgrad':>21} {'wgrad':>21} {'total':>6}"]
    for r in result["layers"]:
        cells = [f"{p['untuned_ms']:7.3f}/{p['tuned_ms']:7.3f} {p['speedup']:4.2f}x" for p in r["phases"].values()]
        lines.append(f"{r['layer'][:24]:24} {r['count']:>3} {' '.join(f'{c:>21}' for c in cells)} {r['speedup_total']:5.2f}x")
    t = result["total"]
    lines.append(f"all layers (weighted by count): {t['untuned_ms']:.2f} ms untuned, {t['tuned_ms']:.2f} ms tuned, "
                 f"{t['speedup']:.2f}x")
    return "\n".join(lines)
