"""Correctness gate: a newly built kernel set must match PyTorch on random data before first use.

TVM can miscompile data-dependent loops silently (TVM_NOTES §3, §8), so every kernel set runs,
through the differentiable torch op, on a random legal mask with an empty unit, an odd batch
size and random data, and is compared with `reference`: `F.conv2d(x, weight * mask)` and its
gradients (the weight gradient restricted to the mask), the one masked-dense oracle of the compiler
side (the tuner's numeric check and the benchmarks use it too).
"""

from __future__ import annotations

import time

import torch

from mest_compile.baseline.dense import dense_phase
from mest_compile.compiler.families import KernelSet, PackedFormat
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.ops import packed_conv2d
from mest_compile.errors import MestError


class KernelGateError(MestError):
    """A compiled kernel disagreed with PyTorch on random data; it is never used."""

# float32 sums of a few hundred products: errors far below this are rounding, above are bugs.
_RTOL = 1e-4

def reference(which: str, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, dy: torch.Tensor | None,
              stride: int, padding: int) -> torch.Tensor:
    """The masked-dense result of phase `which`: what the compiled kernel `which` must compute.

    Forward `F.conv2d(x, weight * mask)`, its input gradient, and its weight gradient restricted to
    the mask (what autograd gives through `weight * mask`, and what training applies).

    Example:
        >>> dx = reference("dgrad", x, w, mask, dy, stride=1, padding=1)  # doctest: +SKIP
    """
    result = dense_phase(which, x, weight * mask, dy, stride, padding)
    return result * mask if which == "wgrad" else result


def phase_errors(kernels: KernelSet, fmt: PackedFormat, x: torch.Tensor, weight: torch.Tensor,
                 mask: torch.Tensor, dy: torch.Tensor) -> dict[str, float]:
    """Relative max error of the torch op on `kernels` (run through autograd, as training does) against
    `reference`, per phase."""
    geo = fmt.geometry
    xs, ws = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    y = packed_conv2d(xs, ws, fmt, kernels)
    y.backward(dy)
    assert xs.grad is not None and ws.grad is not None
    got = {"forward": y.detach(), "dgrad": xs.grad, "wgrad": ws.grad}
    return {which: relative_error(got[which], reference(which, x, weight, mask, dy, geo.stride, geo.padding))
            for which in PHASES}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max error relative to the reference's scale (0 when both are empty)."""
    if ref.numel() == 0:
        return 0.0
    scale = max(1.0, float(ref.abs().max()))
    return float((got - ref).abs().max()) / scale


def check_kernels(kernels: KernelSet, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Run `kernels` against PyTorch; raise `KernelGateError` naming the worst kernel.

    Returns:
        The relative max error of forward, dgrad and wgrad (also stored on `kernels.gate_errors`).
    """
    family = kernels.family
    start = time.perf_counter()
    geo = kernels.geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, geo.in_channels, geo.in_h, geo.in_w, generator=gen)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen)
    mask = family.random_mask(tuple(w.shape), gen)
    # Headroom in the buffers: the kernels must read only the first nnz entries.
    fmt = kernels.pack(mask, capacity=family.units(mask) + 7)
    dy = torch.randn(batch, geo.out_channels, geo.out_h, geo.out_w, generator=gen)

    errors = phase_errors(kernels, fmt, x, w, mask, dy)
    # Kept on the kernel set for reports (`inspect`, the benchmark).
    kernels.gate_errors = errors
    kernels.gate_seconds = time.perf_counter() - start
    bad = {k: v for k, v in errors.items() if not v <= _RTOL}  # `not <=` also catches NaN
    if bad:
        raise KernelGateError(
            f"compiled {family.scheme_name} kernels for {geo} on {kernels.target} failed the correctness "
            f"gate (relative max error {bad}, tolerance {_RTOL}); they will not be used"
        )
    return errors
