"""Guest instructions of one compiled ResNet-32 training step on the emulated ARM board, sparse vs dense.

For each scheme, the step of the sparse model (its convs on the scheme's kernels) and the step of
the same model with every conv dense (its masked weights, on the dense kernels) are cross-compiled
for the `arm` preset and run under qemu with the project's instruction-counting plugin
(`mest_compile.compiler.devices.insn_count`). Instructions, not time: qemu does not model a
Cortex-A's pipeline or caches, so the ratio says how much work each step asks of the core.

    python benchmarks/count_arm_step.py --batch 16 --schemes block,channel

Prints one JSON line per scheme.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--schemes", default="block,pattern+filter_balance,channel,irregular")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from mest_compile.compiler.step.board import count_step_instructions, densified, export_step, write_batch
    from mest_compile.compiler.step.build import Sgd
    from mest_compile.compiler.target import as_target
    from mest_compile.sparsity.module import sparsify
    from mest_compile.sparsity.profile import uniform_profile
    from mest_compile.train.models import build_model

    target, sgd = as_target("arm"), Sgd(momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    work = Path(tempfile.mkdtemp(prefix="arm-step-"))
    # The dense pipeline does the same work whatever its weights' values: counted once.
    dense: float | None = None
    for scheme in args.schemes.split(","):
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=10, in_channels=3)
        sparsify(model, scheme, uniform_profile(model, args.sparsity))
        start = time.perf_counter()
        variants = {"sparse": model} if dense is not None else {"sparse": model, "dense": densified(model)}
        counts = {}
        for side, variant in variants.items():
            exported = export_step(variant, tuple(x.shape), 10, target, sgd, work / f"{scheme}-{side}")
            write_batch(exported, x, y, 0.1)
            counts[side] = count_step_instructions(exported)
        dense = counts.get("dense", dense)
        assert dense is not None
        print(json.dumps({"model": args.model, "scheme": scheme, "sparsity": args.sparsity, "batch": args.batch,
                          "sparse_insns": counts["sparse"], "dense_insns": dense, "ratio": round(dense / counts["sparse"], 2),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
