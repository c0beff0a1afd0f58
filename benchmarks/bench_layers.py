"""Per-layer speed of the compiled block-sparse kernels against dense PyTorch (oneDNN).

Every distinct sparse conv of MEST's wide ResNet-32 (widths 32/64/128, batch 64, CIFAR input) at
the given block sparsity: forward, input gradient and weight gradient, each compiled call timed
interleaved with its dense PyTorch counterpart in one process; the speedup is the ratio of
medians (dense / compiled). The compiled side includes what training pays around the kernels
(gathering the kept values, allocating outputs, scattering the weight gradient).

    .venv/bin/python benchmarks/bench_layers.py [--sparsity 0.9] [--reps 30] [--json]
"""

from __future__ import annotations

import os

# Before torch / tvm start their thread pools: both pools spin after each parallel region by
# default, and two spinning pools on the same cores starve each other when calls interleave.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mest_compile.compiler.build import block_kernels  # noqa: E402
from mest_compile.compiler.formats import BlockFormat, ConvGeometry  # noqa: E402

# (name, in_channels, out_channels, input size, stride) of MEST's wide ResNet-32 sparse convs.
LAYERS = [
    ("layer1", 32, 32, 32, 1),
    ("layer2.0.conv1", 32, 64, 32, 2),
    ("layer2", 64, 64, 16, 1),
    ("layer3.0.conv1", 64, 128, 16, 2),
    ("layer3", 128, 128, 8, 1),
]


def block_mask(out_channels: int, in_channels: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly `sparsity` of the blocks pruned, at random."""
    groups, cols = out_channels // 4, in_channels * 9
    keep = round((1 - sparsity) * groups * cols)
    kept = torch.zeros(groups * cols, dtype=torch.bool)
    kept[torch.randperm(groups * cols, generator=gen)[:keep]] = True
    return kept.view(groups, 1, cols).expand(groups, 4, cols).reshape(out_channels, in_channels, 3, 3)


def timed(fn, out: list[float]) -> None:
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)


def bench_layer(name, cin, cout, size, stride, sparsity, batch, reps, gen) -> dict:
    geo = ConvGeometry(cin, size, size, cout, 3, 3, stride, 1)
    t0 = time.perf_counter()
    k = block_kernels(geo)
    build_s = time.perf_counter() - t0
    x = torch.randn(batch, cin, size, size, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    mask = block_mask(cout, cin, sparsity, gen)
    fmt = BlockFormat.pack(mask, geo)
    dy = torch.randn(batch, cout, geo.out_h, geo.out_w, generator=gen)
    wm = w * mask

    def sparse_fwd():
        y = torch.empty(batch, cout, geo.out_h, geo.out_w)
        k.forward(x, fmt.values(w), fmt.group_ptr, fmt.x_off, y)

    def sparse_dgrad():
        dx = torch.empty_like(x)
        k.dgrad(dy, fmt.values(w), fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, dx)

    def sparse_wgrad():
        dv = torch.empty(fmt.nnz, 4)
        k.wgrad(x, dy, fmt.group_ptr, fmt.x_off, dv)
        torch.zeros(w.numel()).index_put_((fmt.flat_idx[: fmt.nnz],), dv)

    pairs = {
        "fwd": (lambda: F.conv2d(x, wm, stride=stride, padding=1), sparse_fwd),
        "dgrad": (lambda: torch.nn.grad.conv2d_input(x.shape, wm, dy, stride=stride, padding=1), sparse_dgrad),
        "wgrad": (lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=1), sparse_wgrad),
    }
    times = {key: ([], []) for key in pairs}
    for _ in range(3):  # warm up both sides
        for dense, sparse in pairs.values():
            dense(), sparse()
    for _ in range(reps):
        for key, (dense, sparse) in pairs.items():
            timed(dense, times[key][0])
            timed(sparse, times[key][1])
    row = {"name": name, "shape": [cout, cin, 3, 3], "input": [batch, cin, size, size], "stride": stride,
           "blocks": fmt.nnz, "build_s": round(build_s, 3)}
    dense_total = sparse_total = 0.0
    for key, (d, s) in times.items():
        md, ms = statistics.median(d), statistics.median(s)
        dense_total += md
        sparse_total += ms
        row[f"dense_{key}_ms"] = round(md * 1e3, 3)
        row[f"sparse_{key}_ms"] = round(ms * 1e3, 3)
        row[f"speedup_{key}"] = round(md / ms, 2)
    row["speedup_total"] = round(dense_total / sparse_total, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
    gen = torch.Generator().manual_seed(0)
    wanted = set(filter(None, args.layers.split(",")))
    rows = [bench_layer(*layer, args.sparsity, args.batch, args.reps, gen) for layer in LAYERS if not wanted or layer[0] in wanted]
    result = {"scheme": "free_block_prune_column_4", "sparsity": args.sparsity, "batch": args.batch,
              "threads": int(os.environ["TVM_NUM_THREADS"]), "layers": rows}
    if args.json:
        print(json.dumps(result))
        return
    print(f"block scheme, sparsity {args.sparsity}, batch {args.batch}, {result['threads']} threads; ms are medians")
    print(f"{'layer':16} {'fwd d/s ms':>15} {'x':>6} {'dgrad d/s ms':>15} {'x':>6} {'wgrad d/s ms':>15} {'x':>6} {'total x':>8}")
    for r in rows:
        cells = "".join(
            f" {r[f'dense_{k}_ms']:7.2f}/{r[f'sparse_{k}_ms']:<7.2f} {r[f'speedup_{k}']:6.2f}" for k in ("fwd", "dgrad", "wgrad")
        )
        print(f"{r['name']:16}{cells} {r['speedup_total']:8.2f}")


if __name__ == "__main__":
    main()
