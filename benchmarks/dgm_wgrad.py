"""What packing SparCL's gradient mask into the weight-gradient kernel saves, per layer.

    PYTHONPATH=. python benchmarks/dgm_wgrad.py                      # the split-digits recipe's and ResNet-32's layers
    PYTHONPATH=. python benchmarks/dgm_wgrad.py --scheme block --keep 0.8 0.5 --reps 200

For each layer: a mask at `--sparsity`, a random gradient, DGM's top-|g| gradient mask keeping
`--keep` of the live gradients (`algorithms.dgm.top_gradients`), and the compiled weight-gradient
phase as training runs it (the op, its zero fill and placement of the subset's values, and the
scatter into the dense gradient), timed interleaved: on the whole mask against on the gradient
mask's packed cover (the whole mask's, where the cover would leave out under
`grad_subset.MIN_SAVED` of the units). Each result is checked against masked dense first.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from mest_compile.algorithms.dgm import top_gradients
from mest_compile.compiler.cpu import cpu_name
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.gate import reference, relative_error
from mest_compile.compiler.runtime.grad_subset import cover, pack_subset
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D_WGRAD
from mest_compile.io import atomic_write_text
from mest_compile.sparsity.schemes import mask_for

# (name, batch, in_channels, size, out_channels, stride)
LAYERS = [
    ("small_cnn_wide.conv2 (split-digits, batch 10)", 10, 32, 8, 64, 2),
    ("small_cnn_wide.conv3 (split-digits, batch 10)", 10, 64, 4, 64, 1),
    ("resnet32 layer1 conv, batch 64", 64, 32, 32, 32, 1),
    ("resnet32 layer2 conv, batch 64", 64, 64, 16, 64, 1),
    ("resnet32 layer3 conv, batch 64", 64, 128, 8, 128, 1),
]


def _median_ms(fn: object, reps: int, other: object) -> tuple[float, float]:
    """Medians of `fn` and `other`, called alternately `reps` times after a warm-up."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(reps + 5):
        for side, call in enumerate((fn, other)):
            start = time.perf_counter()
            call()  # type: ignore[operator]
            if round_ >= 5:
                times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def measure(scheme: str, sparsity: float, keep: float, layer: tuple, reps: int, seed: int) -> dict[str, object]:
    """One layer's weight-gradient phase on the whole mask and on the gradient mask's cover."""
    name, batch, c, size, o, stride = layer
    geo = ConvGeometry(c, size, size, o, 3, 3, stride, 1)
    family = family_for(scheme)
    kernels = kernels_for(family, geo)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(o, c, 3, 3, generator=gen)
    mask = mask_for(w, scheme, sparsity)
    x = torch.randn(batch, c, size, size, generator=gen)
    dy = torch.randn(batch, o, geo.out_h, geo.out_w, generator=gen)
    grad_mask = top_gradients(torch.randn(w.shape, generator=gen), mask, keep)
    fmt = kernels.pack(mask)
    subset = pack_subset(kernels.family, kernels.pack, fmt, mask, grad_mask)
    values = fmt.values(w).contiguous()
    args = (kernels.handle, geometry_list(geo))
    full_buffers = family.phase_buffers("wgrad", fmt)
    sub_buffers = full_buffers if subset is None else family.phase_buffers("wgrad", subset.fmt)
    slots = None if subset is None else subset.slots

    def full() -> torch.Tensor:
        return fmt.dense_grad(PACKED_CONV2D_WGRAD(x, dy, values, full_buffers, *args), w)

    def narrowed() -> torch.Tensor:
        return fmt.dense_grad(PACKED_CONV2D_WGRAD(x, dy, values, sub_buffers, *args, slots), w)

    want = reference("wgrad", x, w, mask, dy, geo.stride, geo.padding)
    narrowed_want = want if subset is None else want * cover(family, grad_mask, mask)  # None: not worth narrowing
    errors = (relative_error(full(), want), relative_error(narrowed(), narrowed_want))
    if max(errors) > 1e-4:
        raise SystemExit(f"{name}: weight gradient off by {errors} against masked dense")
    full_ms, narrowed_ms = _median_ms(full, reps, narrowed)
    return {"layer": name, "kept_units": fmt.nnz, "computed_units": subset.units if subset else fmt.nnz,
            "full_ms": round(full_ms, 4), "narrowed_ms": round(narrowed_ms, 4),
            "saved": round(1 - narrowed_ms / full_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="irregular")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.8, 0.5])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `train --compiled` runs PyTorch's ops around the kernels
    rows = [{"keep": keep, **measure(args.scheme, args.sparsity, keep, layer, args.reps, args.seed)}
            for keep in args.keep for layer in LAYERS]
    print(f"CPU: {cpu_name()}; scheme {args.scheme}, sparsity {args.sparsity}, torch threads {torch.get_num_threads()}")
    print("| keep | layer | units computed / kept | whole mask ms | gradient mask ms | saved |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['keep']} | {r['layer']} | {r['computed_units']} / {r['kept_units']} | {r['full_ms']:.3f} | "
              f"{r['narrowed_ms']:.3f} | {100 * r['saved']:.0f}% |")  # type: ignore[operator]
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
