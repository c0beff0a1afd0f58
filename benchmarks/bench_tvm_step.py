"""One side of the TVM-step benchmark: median ResNet-32 training-step time, in this process only.

Each side runs in its own process (`dense`: PyTorch eager with masked dense convs, no TVM loaded;
`compiled`: PyTorch eager with compiled sparse convs, `--compiled`; `tvm`: the whole step compiled
by TVM, `--engine tvm`), so no side slows another; run them alternately and compare medians:

    for side in dense tvm compiled dense tvm compiled; do
        python benchmarks/bench_tvm_step.py --side $side --scheme block --reps 10
    done

Prints one JSON line: side, scheme, build seconds, median and all step times in ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("dense", "compiled", "tvm"), required=True)
    parser.add_argument("--scheme", default="block")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()

    from mest_compile.train.config import TrainConfig
    from mest_compile.train.loop import Trainer

    config = TrainConfig(dataset="synthetic", model="resnet32", scheme=args.scheme, sparsity=args.sparsity,
                         batch_size=args.batch, epochs=1, compiled=args.side == "compiled", fallback="never",
                         engine="tvm" if args.side == "tvm" else "torch")
    start = time.perf_counter()
    trainer = Trainer(config, tempfile.mkdtemp(prefix="bench-step-"))
    trainer.model.train()
    # CIFAR-sized batches, as `mest-compile bench` times (the synthetic set's images are 16x16).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, trainer.data.num_classes, (args.batch,), generator=generator)
    trainer.data = dataclasses.replace(trainer.data, train_x=x, train_y=y, test_x=x, test_y=y)
    trainer.engine.begin_epoch(trainer)
    trainer.engine.step(trainer, x, y, 0, last=False)  # builds (tvm) or compiles (compiled) on first use
    build = time.perf_counter() - start
    times = []
    for step in range(args.reps):
        begin = time.perf_counter()
        trainer.engine.step(trainer, x, y, step + 1, last=False)
        times.append((time.perf_counter() - begin) * 1e3)
    print(json.dumps({"side": args.side, "scheme": args.scheme, "setup_s": round(build, 1),
                      "median_ms": round(statistics.median(times), 1), "ms": [round(t, 1) for t in times],
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
