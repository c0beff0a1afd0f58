"""The `mest-compile bench` job: per-layer phases, the whole training step, and memory."""

from __future__ import annotations

import os
from typing import Any

import torch

from mest_compile.compiler.bench.layers import bench_layer, distinct_layers
from mest_compile.compiler.bench.process import keep_freed_memory
from mest_compile.compiler.bench.step import bench_step
from mest_compile.compiler.families import family_for
from mest_compile.compiler.target import as_target, threads
from mest_compile.sparsity.schemes import check_sparsity, get_scheme

# MEST's workload: the wide ResNet-32 on CIFAR-sized input.
IMAGE = (3, 32, 32)


def run_bench(scheme: str, sparsity: float = 0.9, *, model: str = "resnet32", batch: int = 64, reps: int = 30,
              step: bool = True, target: Any = "host", seed: int = 0) -> dict[str, Any]:
    """Benchmark `scheme` at `sparsity`; the result is what `mest-compile bench --json` prints."""
    name = get_scheme(scheme).name
    sparsity = check_sparsity(sparsity)
    family = family_for(name)
    kept_memory = keep_freed_memory()
    torch.set_num_threads(threads())  # both sides get the same cores
    gen = torch.Generator().manual_seed(seed)
    cases = distinct_layers(model, name, batch, IMAGE)
    tgt = as_target(target)
    rows = [bench_layer(family, case, name, sparsity, batch, reps, tgt, gen) for case in cases]
    dense = sum(r["count"] * r["dense_total_ms"] for r in rows)
    sparse = sum(r["count"] * r["sparse_total_ms"] for r in rows)
    result: dict[str, Any] = {
        "scheme": name, "sparsity": sparsity, "model": model, "batch": batch, "threads": threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "keep_freed_memory": kept_memory,
        "layers": rows,
        "sparse_convs": {"count": sum(r["count"] for r in rows), "dense_ms": round(dense, 2),
                         "sparse_ms": round(sparse, 2), "speedup": round(dense / sparse, 2)},
        "memory": {
            "dense_bytes": sum(r["count"] * r["memory_dense_bytes"] for r in rows),
            "packed_bytes": sum(r["count"] * r["memory_packed_bytes"] for r in rows),
            "what": "weights + gradients + SGD momentum of the sparse layers: dense tensors vs packed values "
                    "and index buffers",
        },
    }
    result["memory"]["ratio"] = round(result["memory"]["dense_bytes"] / result["memory"]["packed_bytes"], 2)
    if step:
        result["step"] = bench_step(model, name, sparsity, batch, IMAGE, max(10, reps // 2), tgt, gen)
    return result


def format_bench(result: dict[str, Any]) -> str:
    """The table a person reads."""
    lines = [f"{result['scheme']} at sparsity {result['sparsity']}, {result['model']} batch {result['batch']}, "
             f"{result['threads']} threads; dense/compiled median ms (speedup)"]
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
    lines.append(f"memory of the sparse layers (weights, gradients, momentum): {mem['dense_bytes'] / 2**20:.2f} MiB dense, "
                 f"{mem['packed_bytes'] / 2**20:.2f} MiB packed ({mem['ratio']:.1f}x smaller)")
    if "step" in result:
        s = result["step"]
        lines.append(f"training step ({s['model']}, batch {s['batch']}, {s['layers_compiled']}/{s['layers_sparse']} "
                     f"layers compiled): dense {s['dense_ms']:.1f} ms, compiled {s['sparse_ms']:.1f} ms, "
                     f"{s['speedup']:.2f}x")
    return "\n".join(lines)
