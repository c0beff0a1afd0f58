"""Per-layer speed of the compiled block-sparse kernels against dense PyTorch (oneDNN).

Every distinct sparse conv of MEST's wide ResNet-32 (widths 32/64/128, batch 64, CIFAR input) at
the given block sparsity: forward, input gradient and weight gradient, each compiled call timed
interleaved with its dense PyTorch counterpart in one process; the speedup is the ratio of
medians (dense / compiled). The compiled side includes what training pays around the kernels
(gathering the kept values, allocating outputs, scattering the weight gradient). A fourth pair
times one autograd round trip (forward + backward) of `F.conv2d` against the custom op.

    .venv/bin/python benchmarks/bench_layers.py [--sparsity 0.9] [--reps 30] [--json]
"""

from __future__ import annotations

import os

# Before torch / tvm start their thread pools. TVM's workers spin ~300k iterations after each
# parallel region by default, which here halved the speed of the dense oneDNN conv called next
# (inflating the speedups); 2000 spins bridge a kernel's back-to-back regions and then sleep.
# OpenMP likewise sleeps at once instead of spinning into TVM's time.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mest_compile.compiler.families.block import block_kernels  # noqa: E402
from mest_compile.compiler.formats import ConvGeometry  # noqa: E402
from mest_compile.compiler.families.block_ops import block_conv2d_packed  # noqa: E402

# (name, in_channels, out_channels, input size, stride) of MEST's wide ResNet-32 sparse convs.
LAYERS = [
    ("layer1", 32, 32, 32, 1),
    ("layer2.0.conv1", 32, 64, 32, 2),
    ("layer2", 64, 64, 16, 1),
    ("layer3.0.conv1", 64, 128, 16, 2),
    ("layer3", 128, 128, 8, 1),
]
# How many of the network's 30 sparse convs have each shape (MEST_SPEC section 5).
COUNT = {"layer1": 10, "layer2.0.conv1": 1, "layer2": 9, "layer3.0.conv1": 1, "layer3": 9}


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed activations to the OS after every op.

    Both sides allocate multi-megabyte outputs per call; by default glibc unmaps or trims them on
    free, so every call page-faults its output back in (measured here: +0.3 ms per 8 MB output,
    and dense oneDNN convs 1.5x slower). A training process would set the same (or use a caching
    allocator); it speeds up dense and compiled alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) and libc.mallopt(m_trim_threshold, 1 << 30))


def block_mask(out_channels: int, in_channels: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly `sparsity` of the blocks pruned, at random."""
    groups, cols = out_channels // 4, in_channels * 9
    keep = round((1 - sparsity) * groups * cols)
    kept = torch.zeros(groups * cols, dtype=torch.bool)
    kept[torch.randperm(groups * cols, generator=gen)[:keep]] = True
    return kept.view(groups, 1, cols).expand(groups, 4, cols).reshape(out_channels, in_channels, 3, 3)


def check_at_batch(k, fmt, x, w, wm, dy, stride) -> None:
    """The gate ran at batch 3; check the benchmarked batch too before timing anything."""
    y = torch.empty(dy.shape)
    k.forward(x, fmt.values(w), fmt.group_ptr, fmt.x_off, y)
    dx = torch.empty_like(x)
    k.dgrad(dy, fmt.values(w), fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, dx)
    dv = torch.empty(fmt.nnz, 4)
    k.wgrad(x, dy, fmt.group_ptr, fmt.x_off, dv)
    refs = {
        "fwd": (y, F.conv2d(x, wm, stride=stride, padding=1)),
        "dgrad": (dx, torch.nn.grad.conv2d_input(x.shape, wm, dy, stride=stride, padding=1)),
        "wgrad": (dv, fmt.values(torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=1))),
    }
    for name, (got, ref) in refs.items():
        err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        if not err <= 1e-4:
            raise SystemExit(f"{name} kernel disagrees with PyTorch at batch {x.shape[0]}: relative error {err:.2e}")


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
    fmt = k.pack(mask)
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

    xg, wg, wmg = x.clone().requires_grad_(), w.clone().requires_grad_(), wm.clone().requires_grad_()

    def dense_train():  # what a dense training step runs for this layer: one autograd round trip
        xg.grad = wmg.grad = None  # as in training: gradients are handed on, not accumulated
        F.conv2d(xg, wmg, stride=stride, padding=1).backward(dy)

    def sparse_train():  # the custom op's autograd: gather, forward, dgrad + wgrad, scatter
        xg.grad = wg.grad = None
        block_conv2d_packed(xg, wg, fmt).backward(dy)

    pairs = {
        "fwd": (lambda: F.conv2d(x, wm, stride=stride, padding=1), sparse_fwd),
        "dgrad": (lambda: torch.nn.grad.conv2d_input(x.shape, wm, dy, stride=stride, padding=1), sparse_dgrad),
        "wgrad": (lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=1), sparse_wgrad),
        "autograd": (dense_train, sparse_train),
    }
    check_at_batch(k, fmt, x, w, wm, dy, stride)
    times = {key: ([], []) for key in pairs}
    for _ in range(3):  # warm up both sides
        for dense, sparse in pairs.values():
            dense(), sparse()
    for _ in range(reps):
        for key, (dense, sparse) in pairs.items():
            timed(dense, times[key][0])
            timed(sparse, times[key][1])
    row = {"name": name, "count": COUNT[name], "shape": [cout, cin, 3, 3], "input": [batch, cin, size, size],
           "stride": stride, "blocks": fmt.nnz, "build_s": round(build_s, 3), "tiles": vars(k.tiles)}
    dense_total = sparse_total = 0.0
    for key, (d, s) in times.items():
        md, ms = statistics.median(d), statistics.median(s)
        if key != "autograd":
            dense_total += md
            sparse_total += ms
        row[f"dense_{key}_ms"] = round(md * 1e3, 3)
        row[f"sparse_{key}_ms"] = round(ms * 1e3, 3)
        row[f"speedup_{key}"] = round(md / ms, 2)
        # Best case of each side: less sensitive to other processes on a shared machine.
        row[f"speedup_{key}_min"] = round(min(d) / min(s), 2)
    row["dense_total_ms"] = round(dense_total * 1e3, 3)
    row["sparse_total_ms"] = round(sparse_total * 1e3, 3)
    row["speedup_total"] = round(dense_total / sparse_total, 2)
    # Training state of the layer: weight, gradient and SGD momentum, dense vs packed values.
    row["memory_dense_bytes"] = 3 * w.numel() * 4
    row["memory_packed_bytes"] = 3 * fmt.nnz * 4 * 4 + sum(t.numel() * t.element_size() for t in fmt.buffers().values())
    row["flop_dense_fwd"] = 2 * batch * geo.out_h * geo.out_w * w.numel()
    row["flop_sparse_fwd"] = 2 * batch * geo.out_h * geo.out_w * fmt.nnz * 4
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--malloc-default", action="store_true", help="keep glibc's trimming (page faults every call)")
    args = ap.parse_args()
    kept_memory = False if args.malloc_default else keep_freed_memory()
    torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
    gen = torch.Generator().manual_seed(0)
    wanted = set(filter(None, args.layers.split(",")))
    rows = [bench_layer(*layer, args.sparsity, args.batch, args.reps, gen) for layer in LAYERS if not wanted or layer[0] in wanted]
    result = {"scheme": "free_block_prune_column_4", "sparsity": args.sparsity, "batch": args.batch,
              "threads": int(os.environ["TVM_NUM_THREADS"]), "keep_freed_memory": kept_memory, "layers": rows}
    if not wanted:
        # All 30 sparse convs of one training step (forward + both gradients), count-weighted.
        dense = sum(r["count"] * r["dense_total_ms"] for r in rows)
        sparse = sum(r["count"] * r["sparse_total_ms"] for r in rows)
        result["network_convs"] = {"dense_ms": round(dense, 2), "sparse_ms": round(sparse, 2), "speedup": round(dense / sparse, 2)}
        result["memory"] = {
            "dense_bytes": sum(r["count"] * r["memory_dense_bytes"] for r in rows),
            "packed_bytes": sum(r["count"] * r["memory_packed_bytes"] for r in rows),
        }
    if args.json:
        print(json.dumps(result))
        return
    print(f"block scheme, sparsity {args.sparsity}, batch {args.batch}, {result['threads']} threads, "
          f"keep freed memory {kept_memory}; ms are medians of interleaved runs")
    head = "".join(f" {k + ' d/s ms':>15} {'x':>6}" for k in ("fwd", "dgrad", "wgrad"))
    print(f"{'layer':16}{head} {'total x':>8} {'autograd d/s ms':>16} {'x':>6} {'memory':>7}")
    for r in rows:
        cells = "".join(
            f" {r[f'dense_{k}_ms']:7.2f}/{r[f'sparse_{k}_ms']:<7.2f} {r[f'speedup_{k}']:6.2f}" for k in ("fwd", "dgrad", "wgrad")
        )
        auto = f"{r['dense_autograd_ms']:7.2f}/{r['sparse_autograd_ms']:<7.2f}"
        mem = r["memory_dense_bytes"] / r["memory_packed_bytes"]
        print(f"{r['name']:16}{cells} {r['speedup_total']:8.2f} {auto:>16} {r['speedup_autograd']:6.2f} {mem:6.1f}x")
    if "network_convs" in result:
        net, mem = result["network_convs"], result["memory"]
        print(f"all 30 sparse convs (fwd + dgrad + wgrad): dense {net['dense_ms']:.1f} ms, compiled {net['sparse_ms']:.1f} ms, "
              f"{net['speedup']:.2f}x; weights+grads+momentum {mem['dense_bytes'] / 2**20:.2f} MiB dense, "
              f"{mem['packed_bytes'] / 2**20:.2f} MiB packed")


if __name__ == "__main__":
    main()
