"""Compiled sparse kernels vs dense PyTorch on MEST's ResNet-32, for one or every compiled scheme.

The same measurement as `mest-compile bench` (per-layer forward / input gradient / weight gradient,
a whole training step, memory), run for several schemes in one go; `--out` keeps the JSON results
that docs/BENCHMARKS.md quotes.

    .venv/bin/python benchmarks/bench_layers.py --scheme block --scheme channel --out results.json

Each scheme's dense and compiled sides run in processes of their own, taking turns (see
`mest_compile.compiler.bench.run`); the dense side keeps the environment this script started with.
"""

from __future__ import annotations

import argparse
import json

from mest_compile.compiler.bench.run import format_bench, run_bench
from mest_compile.compiler.families import families

#: One scheme per registered kernel family, as MEST's recipes use it.
SCHEMES = tuple(family.recipe_scheme for family in families())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", action="append", help=f"scheme to measure (repeatable; default: {', '.join(SCHEMES)})")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--step-engine", choices=("tvm", "torch"), default="tvm")
    parser.add_argument("--no-step", action="store_true", help="skip the whole-training-step measurement")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args()
    results = []
    for scheme in args.scheme or SCHEMES:
        result = run_bench(scheme, args.sparsity, batch=args.batch, reps=args.reps, step=not args.no_step,
                           rounds=args.rounds, step_engine=args.step_engine)
        print(format_bench(result), flush=True)
        results.append(result)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
