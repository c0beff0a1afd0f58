"""Correctness gate: a newly built kernel set must match PyTorch on random data before first use.

TVM can miscompile data-dependent loops silently (TVM_NOTES §3, §8), so every kernel set runs,
through the family's differentiable op, on a random legal mask with an empty unit, an odd batch
size and random data, and is compared with `F.conv2d(x, weight * mask)` and its autograd
gradients (the weight gradient restricted to the mask).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mest_compile.compiler.families import KernelFamily, KernelSet

# float32 sums of a few hundred products: errors far below this are rounding, above are bugs.
_RTOL = 1e-4


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max error relative to the reference's scale (0 when both are empty)."""
    if ref.numel() == 0:
        return 0.0
    scale = max(1.0, float(ref.abs().max()))
    return float((got - ref).abs().max()) / scale


def check_family(family: KernelFamily, kernels: KernelSet, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Run `kernels` against PyTorch; raise `KernelGateError` naming the worst kernel.

    Returns:
        The relative max error of forward, dgrad and wgrad (also stored on `kernels.gate_errors`).
    """
    from mest_compile.compiler.build import KernelGateError

    start = time.perf_counter()
    geo = kernels.geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, geo.in_channels, geo.in_h, geo.in_w, generator=gen)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen)
    mask = family.random_mask(tuple(w.shape), gen)
    # Headroom in the buffers: the kernels must read only the first nnz entries.
    fmt = family.pack(kernels, mask, capacity=family.units(mask) + 7)
    dy = torch.randn(batch, geo.out_channels, geo.out_h, geo.out_w, generator=gen)

    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = F.conv2d(xr, wr * mask, stride=geo.stride, padding=geo.padding)
    ref.backward(dy)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    got = family.conv(xs, ws, fmt, kernels)
    got.backward(dy)

    assert xs.grad is not None and xr.grad is not None and ws.grad is not None and wr.grad is not None
    errors = {
        "forward": relative_error(got.detach(), ref.detach()),
        "dgrad": relative_error(xs.grad, xr.grad),
        "wgrad": relative_error(ws.grad, wr.grad),
    }
    # Kept on the kernel set for reports (`inspect`, the benchmark).
    setattr(kernels, "gate_errors", errors)
    setattr(kernels, "gate_seconds", time.perf_counter() - start)
    bad = {k: v for k, v in errors.items() if not v <= _RTOL}  # `not <=` also catches NaN
    if bad:
        raise KernelGateError(
            f"compiled {family_key_of(family)} kernels for {geo} on {kernels.target} failed the correctness "
            f"gate (relative max error {bad}, tolerance {_RTOL}); they will not be used"
        )
    return errors


def family_key_of(family: KernelFamily) -> str:
    from mest_compile.compiler.build import family_key

    return family_key(family)
