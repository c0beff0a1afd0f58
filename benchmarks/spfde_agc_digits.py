"""SpFDE and AGC on top of MEST at 90% on digits (configs/demo.yaml): FLOPs, time, accuracy over seeds.

    PYTHONPATH=. python benchmarks/spfde_agc_digits.py --out runs/spfde_agc   # writes results.json there

Runs, per seed: MEST alone (the demo recipe, 30 epochs); MEST + SpFDE (progressive freezing and
circular sieving); MEST and MEST + AGC at 70% of the epochs (21, the mutation stages scaled alike);
MEST + AGC at 30 epochs (the first epoch reaching MEST's mean final accuracy is printed).
Time is the sum of the epochs' `seconds` (their algorithms' epoch starts, training, evaluation) on
one torch thread, and the CPU time of the whole `fit()` (checkpoints and plot included), which a
busy shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import time
from typing import Any

import yaml

from mest_compile.io import atomic_write_text
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

DEMO = pathlib.Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
# The defaults: freezing from epoch 7 (a quarter), a unit every 4 epochs, up to conv2; the partial
# set 75% of the data, its easiest 20% swapped every 5 epochs.
SPFDE = dict(freeze="progressive", data_sieving=0.2)
# 70% of 30 epochs; the demo's stage boundaries 17-23 scaled by 0.7.
SHORT = dict(epochs=21, mask_update_decay_epoch="12-16")
VARIANTS: dict[str, dict[str, Any]] = {"mest": {}, "mest+spfde": SPFDE, "mest+freeze": {"freeze": "progressive"},
                                       "mest+sieve": {"data_sieving": 0.2}, "mest@21": SHORT,
                                       "mest+agc@21": {**SHORT, "agc": True}, "mest+agc": {"agc": True}}


def run(name: str, seed: int, out: pathlib.Path, compiled: bool) -> dict[str, Any]:
    """One training run; its summary numbers."""
    kernels = {"compiled": True, "fallback": "never"} if compiled else {}
    settings = {**yaml.safe_load(DEMO.read_text()), **VARIANTS[name], **kernels, "seed": seed, "threads": 1}
    run_dir = out / f"{name}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(TrainConfig.from_dict(settings), run_dir)
    cpu = time.process_time()
    summary = trainer.fit()
    cpu = time.process_time() - cpu
    return {"final_test_acc": summary["final_test_acc"], "training_flops": summary["training_flops"],
            "dense_equivalent_flops": summary["dense_equivalent_flops"],
            "seconds": sum(r["seconds"] for r in trainer.history), "cpu_seconds": cpu,
            "test_acc_by_epoch": [r["test_acc"] for r in trainer.history],
            "kernels_skipped": {key: (summary["kernels"] or {}).get(key) for key in ("wgrad_skipped", "dgrad_skipped")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/spfde_agc"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[914, 915, 916])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--compiled", action="store_true", help="sparse layers on compiled TVM kernels")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in dict.fromkeys(args.variants)}
    for seed in args.seeds:  # interleaved, so a busy machine slows every variant alike
        for name in results:
            results[name].append(run(name, seed, args.out, args.compiled))
            atomic_write_text(args.out / "results.json", json.dumps(results, indent=1))
    target = statistics.mean(r["final_test_acc"] for r in results.get("mest", next(iter(results.values()))))
    for name, runs in results.items():
        acc = statistics.mean(r["final_test_acc"] for r in runs)
        flops = statistics.mean(r["training_flops"] for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        cpu = statistics.mean(r["cpu_seconds"] for r in runs)
        # Epochs until the mean over seeds first reaches MEST's mean final accuracy.
        curve = [statistics.mean(epoch) for epoch in zip(*(r["test_acc_by_epoch"] for r in runs))]
        reach = next((i + 1 for i, a in enumerate(curve) if a >= target), None)
        print(f"{name:<12} test {100 * acc:.2f}%  FLOPs {flops:.4g}  epoch time {seconds:.2f} s  CPU {cpu:.2f} s  "
              f"reaches {100 * target:.2f}% at epoch {reach}")


if __name__ == "__main__":
    main()
