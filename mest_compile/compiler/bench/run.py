"""The `mest-compile bench` job: dense and compiled, each in a process of its own, alternating.

The dense side (`mest_compile.baseline.worker`) is PyTorch as a user runs it: a process that
never loads TVM, with the user's environment and PyTorch's default threads. The compiled side
(`compiler/bench/worker.py`) builds and checks its kernels and its training step first. Then the
two take turns, one round each, so that only one side runs at a time and a noisy neighbour hits
both; the first round of each is a warm-up. Every number is a ratio of medians over all rounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Any

from mest_compile.compiler.bench.layers import distinct_layers
from mest_compile.compiler.bench.worker import STEP_ENGINES
from mest_compile.compiler.cpu import cpu_name
from mest_compile.errors import MestError, last_output_line
from mest_compile.sparsity.schemes import check_sparsity, get_scheme

# MEST's workload: the wide ResNet-32 on CIFAR-sized input.
IMAGE = (3, 32, 32)
PHASE_KEYS = ("fwd", "dgrad", "wgrad", "autograd")


class _Side:
    """One side's process: set up, then a round per request."""

    def __init__(self, name: str, module: str, spec: dict[str, Any], env: dict[str, str], log: IO[str]) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen([sys.executable, "-m", module, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, env=env)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise MestError(f"the {self.name} side of the benchmark stopped: {last_output_line(self.log.read())}")
        return json.loads(line)

    def round(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextmanager
def _sides(spec: dict[str, Any]) -> Iterator[tuple[_Side, _Side]]:
    with ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)]
        dense = _Side("dense", "mest_compile.baseline.worker", spec, user_environment(), logs[0])
        stack.callback(dense.close)
        compiled = _Side("compiled", "mest_compile.compiler.bench.worker", spec, dict(os.environ), logs[1])
        stack.callback(compiled.close)
        yield dense, compiled


def user_environment() -> dict[str, str]:
    """This process's environment without what importing mest_compile set in it (the user's own)."""
    import mest_compile

    env = dict(os.environ)
    for name in mest_compile.SET_ON_IMPORT:
        env.pop(name, None)
    return env


def run_bench(scheme: str, sparsity: float = 0.9, *, model: str = "resnet32", batch: int = 64, reps: int = 30,
              step: bool = True, target: str = "host", seed: int = 0, rounds: int = 4,
              step_engine: str = "tvm", work_dir: str | None = None, tuning: str = "off") -> dict[str, Any]:
    """Benchmark `scheme` at `sparsity`; the result is what `mest-compile bench --json` prints.

    Args:
        reps: calls of each layer phase per round (the step runs `max(4, reps // 4)` per round).
        rounds: timed rounds of each side, after one warm-up round each.
        step_engine: the compiled step: "tvm" (`--engine tvm`) or "torch" (`--compiled`).
        work_dir: tuning records (`mest-compile tune --work-dir`) the compiled side builds with.
        tuning: `--tuning` of the compiled side (quick: its layers tuned for this CPU first, cached).
    """
    name = get_scheme(scheme).name
    sparsity = check_sparsity(sparsity)
    STEP_ENGINES.get(step_engine)
    cases = [{"name": c.name, "count": c.count, **dataclasses.asdict(c.geometry)}
             for c in distinct_layers(model, name, batch, IMAGE)]
    spec = {"scheme": name, "sparsity": sparsity, "model": model, "batch": batch, "reps": reps, "seed": seed,
            "step": step, "step_reps": max(4, reps // 4), "image": list(IMAGE), "target": target,
            "step_engine": step_engine, "work_dir": work_dir, "tuning": tuning, "cases": cases}
    samples: dict[str, list[dict[str, Any]]] = {"dense": [], "compiled": []}
    with _sides(spec) as (dense, compiled):
        facts = {"dense": dense.read(), "compiled": compiled.read()}
        for index in range(rounds + 1):
            for side in (dense, compiled):
                result = side.round()
                if index:  # the first round of each side warms it up
                    samples[side.name].append(result)
    return _summarise(spec, facts, samples)


def _pooled(rounds: list[dict[str, Any]], *path: str) -> list[float]:
    out: list[float] = []
    for result in rounds:
        value: Any = result
        for key in path:
            value = value[key]
        out += value
    return out


def _summarise(spec: dict[str, Any], facts: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    dense_s, compiled_s = samples["dense"], samples["compiled"]
    rows = []
    for case in spec["cases"]:
        row: dict[str, Any] = {"name": case["name"], "count": case["count"], **facts["compiled"]["layers"][case["name"]]}
        for key in PHASE_KEYS:
            d, c = (statistics.median(_pooled(s, "layers", case["name"], key)) for s in (dense_s, compiled_s))
            row |= {f"dense_{key}_ms": round(d, 3), f"sparse_{key}_ms": round(c, 3), f"speedup_{key}": round(d / c, 2)}
        row["dense_total_ms"] = round(sum(row[f"dense_{k}_ms"] for k in PHASE_KEYS[:3]), 3)
        row["sparse_total_ms"] = round(sum(row[f"sparse_{k}_ms"] for k in PHASE_KEYS[:3]), 3)
        row["speedup_total"] = round(row["dense_total_ms"] / row["sparse_total_ms"], 2)
        rows.append(row)
    dense = sum(r["count"] * r["dense_total_ms"] for r in rows)
    sparse = sum(r["count"] * r["sparse_total_ms"] for r in rows)
    memory = {"dense_bytes": sum(r["count"] * r["memory_dense_bytes"] for r in rows),
              "packed_bytes": sum(r["count"] * r["memory_packed_bytes"] for r in rows),
              "what": "weights + gradients + SGD momentum of the sparse layers: dense tensors vs packed values "
                      "and index buffers",
              "peak_rss_bytes": {side: max(r["peak_rss_bytes"] for r in s) for side, s in samples.items()}}
    memory["ratio"] = round(memory["dense_bytes"] / memory["packed_bytes"], 2)
    result: dict[str, Any] = {
        "scheme": spec["scheme"], "sparsity": spec["sparsity"], "model": spec["model"], "batch": spec["batch"],
        "rounds": len(dense_s), "reps": spec["reps"], "cpu": cpu_name(), "sides": facts, "layers": rows,
        "sparse_convs": {"count": sum(r["count"] for r in rows), "dense_ms": round(dense, 2),
                         "sparse_ms": round(sparse, 2), "speedup": round(dense / sparse, 2)},
        "memory": memory,
    }
    if spec["step"]:
        d, c = (statistics.median(_pooled(s, "step")) for s in (dense_s, compiled_s))
        result["step"] = {"model": spec["model"], "batch": spec["batch"], "engine": spec["step_engine"],
                          "dense_ms": round(d, 1), "sparse_ms": round(c, 1), "speedup": round(d / c, 2)}
    return result


def format_bench(result: dict[str, Any]) -> str:
    """The table a person reads."""
    sides = result["sides"]
    lines = [f"{result['scheme']} at sparsity {result['sparsity']}, {result['model']} batch {result['batch']}, on "
             f"{result['cpu']}; each side in its own process ({result['rounds']} rounds, dense with "
             f"{sides['dense']['torch_threads']} torch threads); dense/compiled median ms (speedup)"]
    lines.append(f"{'layer':16} {'x':>3} {'fwd':>20} {'dgrad':>20} {'wgrad':>20} {'total':>7} {'autograd':>7} {'memory':>7}")
    for r in result["layers"]:
        cells = " ".join(f"{r[f'dense_{k}_ms']:6.2f}/{r[f'sparse_{k}_ms']:<6.2f}({r[f'speedup_{k}']:4.1f})"
                         for k in ("fwd", "dgrad", "wgrad"))
        memory = r["memory_dense_bytes"] / r["memory_packed_bytes"]
        lines.append(f"{r['name']:16} {r['count']:>3} {cells} {r['speedup_total']:6.2f}x {r['speedup_autograd']:6.2f}x "
                     f"{memory:6.1f}x")
    convs, mem = result["sparse_convs"], result["memory"]
    lines.append(f"all {convs['count']} sparse convs (fwd + dgrad + wgrad): dense {convs['dense_ms']:.1f} ms, "
                 f"compiled {convs['sparse_ms']:.1f} ms, {convs['speedup']:.2f}x")
    rss = mem["peak_rss_bytes"]
    lines.append(f"memory of the sparse layers (weights, gradients, momentum): {mem['dense_bytes'] / 2**20:.2f} MiB dense, "
                 f"{mem['packed_bytes'] / 2**20:.2f} MiB packed ({mem['ratio']:.1f}x smaller); peak RSS of the "
                 f"processes: dense {rss['dense'] / 2**20:.0f} MiB, compiled {rss['compiled'] / 2**20:.0f} MiB")
    if "step" in result:
        s = result["step"]
        lines.append(f"training step ({s['model']}, batch {s['batch']}, compiled step: --engine {s['engine']}): "
                     f"dense {s['dense_ms']:.1f} ms, compiled {s['sparse_ms']:.1f} ms, {s['speedup']:.2f}x")
    return "\n".join(lines)
