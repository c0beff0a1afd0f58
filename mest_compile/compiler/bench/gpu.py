"""`mest-compile bench --target cuda`: the compiled CUDA kernels against cuDNN, on this machine's GPU.

For each scheme, every distinct sparse conv of the model (`layers.py`) is timed phase by phase,
cuDNN (`F.conv2d`, `conv2d_input`, `conv2d_weight`) against the layer's compiled kernels
(`gpu_layers.py`), then the whole SGD step of the masked-dense model against the same model after
`compile_model(model, "cuda")`. Both sides run in this process, taking turns call by call, timed
with CUDA events (`gpu_timing.py`); every number is a ratio of medians. fp32 against fp32:
TF32 is off for cuDNN and matmuls, and `cudnn.benchmark` picks cuDNN's fastest algorithm.

All layers of all schemes are timed before any training step (the steps build a layer's kernels
once per layer, so they take most of the time), and the JSON file is rewritten, atomically, after
each piece: a run cut short by a timeout leaves what it measured, with `"complete": false`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from mest_compile.baseline.dense import step_batch
from mest_compile.compiler.bench.gpu_timing import interleaved_ms, summary
from mest_compile.compiler.bench.layers import distinct_layers
from mest_compile.compiler.families import family_for
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.target import Target, as_target
from mest_compile.errors import MestError
from mest_compile.io import atomic_write_text
from mest_compile.sparsity.schemes import check_sparsity, get_scheme

#: The schemes with GPU kernels for every phase, measured when no --scheme is given.
GPU_SCHEMES = ("block", "pattern+filter_balance", "channel", "irregular")
#: MEST's workload: CIFAR-sized input.
IMAGE = (3, 32, 32)
#: Phases a layer row reports; "autograd" (forward + backward round trip) is not in the totals.
PHASE_KEYS = ("fwd", "dgrad", "wgrad", "autograd")


def require_cuda() -> None:
    """Refuse, in one line, where PyTorch sees no CUDA GPU."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise MestError(f"no CUDA GPU: torch {torch.__version__} ({build}) sees none; the GPU benchmark needs "
                        f"NVIDIA's driver, a GPU and a CUDA build of torch")


def gpu_plan(schemes: tuple[str, ...], model: str = "resnet32", batch: int = 64,
             target: Any = "cuda") -> list[dict[str, Any]]:
    """What the benchmark will time: per scheme, the distinct sparse layers (in model order) and phases.

    Unknown schemes and schemes without device kernels for every phase are refused here, before
    anything is built or timed.
    """
    tgt = as_target(target)
    plan = []
    for scheme in schemes or GPU_SCHEMES:
        name = get_scheme(scheme).name
        family = family_for(name)
        for which in PHASES:
            tgt.family.require(family, which)
        cases = [{"name": c.name, "count": c.count, **dataclasses.asdict(c.geometry)}
                 for c in distinct_layers(model, name, batch, IMAGE)]
        plan.append({"scheme": name, "cases": cases, "phases": list(PHASE_KEYS)})
    return plan


def environment() -> dict[str, Any]:
    """The GPU, torch, CUDA, cuDNN and TVM this run measured (every recorded number names them)."""
    import tvm

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "tvm": tvm.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        facts |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                  "multiprocessors": props.multi_processor_count, "gpu_memory_bytes": props.total_memory,
                  "cudnn": torch.backends.cudnn.version()}
    return facts


def fp32_for_fp32() -> dict[str, Any]:
    """cuDNN's fastest fp32 algorithm, TF32 off (both sides compute in fp32); the settings, for the record.

    Only the legacy `allow_tf32` flags are set: mixing them with the `fp32_precision` API makes
    PyTorch refuse to read them back. cuDNN convolutions default to TF32 without this.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    settings: dict[str, Any] = {"cudnn_benchmark": torch.backends.cudnn.benchmark}
    for name, read in (("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                       ("matmul_allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32)):
        try:
            settings[name] = bool(read())
        except RuntimeError as err:  # a later torch refusing the legacy reading: record why
            settings[name] = f"unreadable: {err}"[:200]
    return settings


def layer_rows(entry: dict[str, Any], sparsity: float, batch: int, seed: int, reps: int, rounds: int,
               target: Target) -> dict[str, Any]:
    """One scheme's layers, timed: a row per distinct layer and the total over the model's layers."""
    from mest_compile.compiler.bench.gpu_layers import layer_pairs

    rows = []
    for case in entry["cases"]:
        pairs, facts = layer_pairs(case, entry["scheme"], sparsity, batch, seed, target)
        samples = interleaved_ms(pairs, reps=reps, rounds=rounds, device=_device_of(target))
        row: dict[str, Any] = {"name": case["name"], "count": case["count"], **facts}
        for key, (dense, compiled) in samples.items():
            row[key] = summary(dense, compiled)
        row["total"] = _total([row[key] for key in ("fwd", "dgrad", "wgrad")])
        rows.append(row)
    weighted = [{"dense_ms": r["count"] * r["total"]["dense_ms"], "sparse_ms": r["count"] * r["total"]["sparse_ms"]}
                for r in rows]
    return {"layers": rows, "sparse_convs": {"count": sum(r["count"] for r in rows), **_total(weighted)}}


def _total(parts: list[dict[str, float]]) -> dict[str, float]:
    dense, sparse = sum(p["dense_ms"] for p in parts), sum(p["sparse_ms"] for p in parts)
    return {"dense_ms": round(dense, 4), "sparse_ms": round(sparse, 4), "speedup": round(dense / sparse, 3)}


def _device_of(target: Target) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if target.tvm.kind.name == "cuda" else torch.device("cpu")


def run_gpu_bench(schemes: tuple[str, ...] = (), sparsity: float = 0.9, *, model: str = "resnet32", batch: int = 64,
                  reps: int = 30, rounds: int = 4, step: bool = True, target: Any = "cuda", seed: int = 0,
                  json_path: str | None = None) -> dict[str, Any]:
    """Benchmark `schemes` (default `GPU_SCHEMES`) on the GPU; the result is what `--json` writes.

    Args:
        reps, rounds: `reps` calls of each phase per round, `rounds` rounds (a synchronisation after
            each), after three warm-up calls; the step runs `max(4, reps // 4)` per round.
        json_path: rewritten (atomically) after each scheme's layers and each step.
    """
    tgt = as_target(target)
    if reps < 1 or rounds < 1:
        raise MestError(f"--reps and --rounds must be at least 1, got {reps} and {rounds}")
    sparsity = check_sparsity(sparsity)
    plan = gpu_plan(schemes, model, batch, tgt)  # bad arguments are refused with or without a GPU
    if tgt.tvm.kind.name == "cuda":
        require_cuda()
    result: dict[str, Any] = {
        "kind": "gpu", "target": tgt.key, "model": model, "batch": batch, "sparsity": sparsity, "reps": reps,
        "rounds": rounds, "timing": "CUDA events per call, dense and compiled taking turns; medians",
        "environment": environment(), "settings": fp32_for_fp32(), "complete": False,
        "schemes": {entry["scheme"]: {} for entry in plan},
    }

    def save() -> None:
        if json_path is not None:
            atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")

    save()
    for entry in plan:
        result["schemes"][entry["scheme"]] |= layer_rows(entry, sparsity, batch, seed, reps, rounds, tgt)
        save()
    if step:
        from mest_compile.compiler.bench.gpu_layers import step_pair

        x, y = step_batch({"seed": seed, "batch": batch, "image": list(IMAGE)})
        step_reps = max(4, reps // 4)
        for entry in plan:
            (dense, compiled), facts = step_pair(model, entry["scheme"], sparsity, x, y, seed, tgt, _device_of(tgt))
            samples = interleaved_ms({"step": (dense, compiled)}, reps=step_reps, rounds=rounds,
                                     device=_device_of(tgt), sync_each=True)
            result["schemes"][entry["scheme"]]["step"] = {"model": model, "batch": batch, "optimizer": "SGD",
                                                          **facts, **summary(*samples["step"])}
            save()
    result["complete"] = True
    save()
    return result


def format_gpu_bench(result: dict[str, Any]) -> str:
    """The table a person reads: per scheme, each layer's phases (dense/compiled ms and speedup)."""
    env = result["environment"]
    lines = [f"{result['model']} batch {result['batch']} at sparsity {result['sparsity']} on {env.get('gpu', 'no GPU')} "
             f"(torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env.get('cudnn')}); fp32, TF32 off; "
             f"cuDNN/compiled median ms (speedup)"]
    for scheme, res in result["schemes"].items():
        lines.append(f"== {scheme}")
        lines.append(f"{'layer':16} {'x':>3} " + " ".join(f"{k:>21}" for k in PHASE_KEYS) + f" {'total':>21}")
        for r in res.get("layers", []):
            cells = " ".join(f"{r[k]['dense_ms']:7.3f}/{r[k]['sparse_ms']:<7.3f}({r[k]['speedup']:4.2f})"
                             for k in (*PHASE_KEYS, "total"))
            lines.append(f"{r['name']:16} {r['count']:>3} {cells}")
        if "sparse_convs" in res:
            c = res["sparse_convs"]
            lines.append(f"all {c['count']} sparse convs (fwd + dgrad + wgrad): cuDNN {c['dense_ms']:.2f} ms, "
                         f"compiled {c['sparse_ms']:.2f} ms, {c['speedup']:.2f}x")
        if "step" in res:
            s = res["step"]
            lines.append(f"training step (SGD): dense {s['dense_ms']:.2f} ms, compiled {s['sparse_ms']:.2f} ms, "
                         f"{s['speedup']:.2f}x (kernels built in {s['build_s']:.0f} s)")
    if not result["complete"]:
        lines.append("incomplete: the run stopped before every scheme was measured")
    return "\n".join(lines)
