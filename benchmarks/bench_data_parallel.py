"""Data-parallel training: bytes all-reduced per step (dense vs packed) and throughput of 1 vs N processes.

Bytes are counted for a model at a sparsity without training (`PackedGradients`, the buffer a
step reduces). Throughput trains the same run on 1 process and with `torchrun` on N (packed and
dense gradients), and quotes training examples per second over the epochs after the first
(the first pays start-up); each epoch's time includes the evaluation every rank runs.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data_parallel.py --epochs 4 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from mest_compile.algorithms.packed_grads import PackedGradients
from mest_compile.sparsity.module import sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model


def reduced_bytes(model_name: str, sparsity: float, in_channels: int) -> dict[str, Any]:
    """Bytes a step all-reduces for `model_name` at `sparsity` (irregular): dense and packed."""
    model = build_model(model_name, num_classes=10, in_channels=in_channels)
    grads = PackedGradients(model, sparsify(model, "irregular", uniform_profile(model, sparsity)), packed=True)
    return {"model": model_name, "sparsity": sparsity, "dense_bytes": grads.dense_bytes,
            "packed_bytes": grads.packed_bytes, "ratio": grads.dense_bytes / grads.packed_bytes}


def throughput(nproc: int, flags: list[str], epochs: int, out: pathlib.Path) -> dict[str, Any]:
    """Train `epochs` epochs on `nproc` processes; examples per second after the first epoch."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [*(launch if nproc > 1 else [sys.executable]), "-m", "mest_compile", "train", "--out", str(out),
               "--epochs", str(epochs), "--quiet", *flags]
    subprocess.run(command, env=env, check=True, capture_output=True)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(record["seconds"] for record in history)
    summary = json.loads((out / "summary.json").read_text())
    examples = sum(record["n_train"] for record in history)
    return {"processes": nproc, "flags": " ".join(flags), "examples_per_second": examples / seconds,
            "seconds_per_epoch": seconds / len(history), "final_test_acc": summary["final_test_acc"],
            "distributed": summary["distributed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flags", default="--batch-size 64", help="train flags of every throughput run")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON file of the results")
    args = parser.parse_args()
    results: dict[str, Any] = {"bytes": [reduced_bytes("small_cnn", args.sparsity, 1),
                                         reduced_bytes("resnet32", args.sparsity, 3)], "throughput": []}
    for row in results["bytes"]:
        print(f"{row['model']} at {row['sparsity']:.0%}: dense {row['dense_bytes']} B/step, packed "
              f"{row['packed_bytes']} B/step ({row['ratio']:.2f}x fewer)")
    flags = args.flags.split()
    # One process on 1 and on all cores (torch's default), N processes with the cores divided.
    cores = str(len(os.sched_getaffinity(0)))
    runs = [(1, [*flags, "--threads", "1"]), (1, [*flags, "--threads", cores]), (args.nproc, flags),
            (args.nproc, [*flags, "--no-packed-grads"])]
    with tempfile.TemporaryDirectory() as scratch:
        rows: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(runs))}
        for round_ in range(args.rounds):  # the runs take turns: a busy moment hits all of them
            for i, (nproc, run_flags) in enumerate(runs):
                rows[i].append(throughput(nproc, run_flags, args.epochs, pathlib.Path(scratch) / f"{round_}-{i}"))
        for i, (nproc, run_flags) in enumerate(runs):
            speeds = sorted(row["examples_per_second"] for row in rows[i])
            median = speeds[len(speeds) // 2]
            results["throughput"].append({**rows[i][-1], "examples_per_second": median, "all": speeds})
            print(f"{nproc} process(es) {' '.join(run_flags)}: {median:.0f} examples/s (median of "
                  f"{', '.join(f'{v:.0f}' for v in speeds)}), test acc {rows[i][-1]['final_test_acc']:.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
