"""SparCL on split-digits (configs/sparcl_digits.yaml): dense DER++, sparse DER++, SparCL and its ablation.

    PYTHONPATH=. python benchmarks/sparcl_digits.py --out runs/sparcl --jobs 2   # results.json there
    PYTHONPATH=. python benchmarks/sparcl_digits.py --out runs/sparcl_c --variants sparse sparcl --compiled
    PYTHONPATH=. python benchmarks/sparcl_digits.py --flags="--epochs 50 --tdm-every 2 --ddr-every 2"  # 10 per task

Each run is a `mest-compile train` process (`--jobs` at a time, one torch thread each); the table
gives, per variant, the mean over seeds of Class-IL and Task-IL accuracy, forgetting, counted
training FLOPs (and their ratio to dense DER++'s), and the wall time per task (the mean over tasks
of the sum of each task's epoch `seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mest_compile.io import atomic_write_text

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "sparcl_digits.yaml"
VARIANTS: dict[str, list[str]] = {
    "dense": ["--sparsity", "0", "--no-sparcl"],
    "sparse": ["--no-sparcl"],
    "sparcl": [],
    "sparcl-tdm": ["--no-sparcl", "--ddr", "--dgm"],
    "sparcl-ddr": ["--no-sparcl", "--tdm", "--dgm"],
    "sparcl-dgm": ["--no-sparcl", "--tdm", "--ddr"],
}


def run(name: str, seed: int, out: pathlib.Path, compiled: bool, extra: list[str]) -> dict[str, Any]:
    """One run's summary numbers and its wall time per task."""
    run_dir = out / f"{name}-s{seed}"
    flags = [*VARIANTS[name], *extra, "--seed", str(seed), "--threads", "1", "--quiet", "--out", str(run_dir)]
    if compiled:
        flags += ["--compiled", "--fallback", "never"]
    command = [sys.executable, "-c", "from mest_compile.cli import main; main()", "train", "--config", str(CONFIG), *flags]
    subprocess.run(command, check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_task: dict[int, float] = {}
    for record in records:
        per_task[record["task"]] = per_task.get(record["task"], 0.0) + record["seconds"]
    return {"class_il": summary["class_il_accuracy"], "task_il": summary["task_il_accuracy"],
            "forgetting": summary["forgetting"], "flops": summary["training_flops"],
            "seconds_per_task": statistics.mean(per_task.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/sparcl"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="sparse layers on compiled TVM kernels")
    parser.add_argument("--flags", default="", help="train flags added to every run (over the recipe)")
    args = parser.parse_args()
    jobs = [(name, seed) for name in args.variants for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda job: run(*job, args.out, args.compiled, args.flags.split()), jobs))
    results = {f"{name}-s{seed}": result for (name, seed), result in zip(jobs, done)}
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    dense = [r["flops"] for key, r in results.items() if key.startswith("dense-")]
    print("| run | Class-IL | Task-IL | forgetting | training FLOPs | vs dense DER++ | s / task |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        rows = [results[f"{name}-s{seed}"] for seed in args.seeds]
        mean = {key: statistics.mean(r[key] for r in rows) for key in rows[0]}
        ratio = f"{statistics.mean(dense) / mean['flops']:.2f}x fewer" if dense else "-"
        per_seed = " / ".join(f"{100 * r['class_il']:.1f}" for r in rows)
        print(f"| {name} | {100 * mean['class_il']:.2f}% ({per_seed}) | {100 * mean['task_il']:.2f}% | "
              f"{100 * mean['forgetting']:.1f} | {mean['flops']:.3e} | {ratio} | {mean['seconds_per_task']:.2f} |")


if __name__ == "__main__":
    main()
