"""Compiled sparse kernels vs dense PyTorch on MEST's ResNet-32, for one or every compiled scheme.

The same measurement as `mest-compile bench` (per-layer forward / input gradient / weight gradient,
a whole training step, memory), run for several schemes in one go; `--out` keeps the JSON results
that docs/BENCHMARKS.md quotes.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_layers.py --scheme block --scheme channel --out results.json
"""

from __future__ import annotations

import os

# Before torch loads (see mest_compile/__init__.py): spinning OpenMP workers starve TVM's pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402

from mest_compile.compiler.bench.run import format_bench, run_bench  # noqa: E402
from mest_compile.compiler.families import families  # noqa: E402

#: One scheme per registered kernel family, as MEST's recipes use it.
SCHEMES = tuple(family.recipe_scheme for family in families())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", action="append", help=f"scheme to measure (repeatable; default: {', '.join(SCHEMES)})")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--no-step", action="store_true", help="skip the whole-training-step measurement")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args()
    results = []
    for scheme in args.scheme or SCHEMES:
        result = run_bench(scheme, args.sparsity, batch=args.batch, reps=args.reps, step=not args.no_step)
        print(format_bench(result), flush=True)
        results.append(result)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
