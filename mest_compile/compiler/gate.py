"""Correctness gate: a newly built kernel set must match PyTorch on random data before use.

TVM can miscompile data-dependent loops silently (TVM_NOTES §3, §8), so every kernel set is run
on a random mask with an empty filter group, odd batch size and random data, and compared with
`F.conv2d(x, weight * mask)` and its autograd gradients.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


# float32 sums of a few hundred products: errors far below this are rounding, above are bugs.
_RTOL = 1e-4


def _close(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Error relative to the reference's scale (0 when both are all-zero)."""
    if ref.numel() == 0:
        return 0.0
    scale = max(1.0, float(ref.abs().max()))
    return float((got - ref).abs().max()) / scale


def random_block_mask(out_channels: int, columns_shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A legal block mask `(O, C, kh, kw)`; the first filter group is always empty."""
    groups = out_channels // 4
    cols = int(torch.tensor(columns_shape).prod())
    kept = torch.rand(groups, cols, generator=generator) < density
    kept[0] = False
    return kept[:, None, :].expand(groups, 4, cols).reshape(out_channels, *columns_shape)


def check_block_kernels(kernels, batch: int = 3, seed: int = 0) -> None:
    """Run the three kernels against PyTorch; raise `KernelGateError` naming the worst one."""
    from mest_compile.compiler.build import KernelGateError

    start = time.perf_counter()
    geo = kernels.geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, geo.in_channels, geo.in_h, geo.in_w, generator=gen)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen)
    mask = random_block_mask(geo.out_channels, tuple(w.shape[1:]), 0.4, gen)
    fmt = kernels.pack(mask, capacity=int(mask[::4].sum()) + 7)
    dy = torch.randn(batch, geo.out_channels, geo.out_h, geo.out_w, generator=gen)

    wm = (w * mask).requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    ref = F.conv2d(xr, wm, stride=geo.stride, padding=geo.padding)
    ref.backward(dy)

    values = fmt.values(w).contiguous()
    y = torch.empty_like(ref)
    kernels.forward(x, values, fmt.group_ptr, fmt.x_off, y)
    dx = torch.empty_like(x)
    kernels.dgrad(dy, values, fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, dx)
    dv = torch.empty_like(values)
    kernels.wgrad(x, dy, fmt.group_ptr, fmt.x_off, dv)

    errors = {
        "forward": _close(y, ref.detach()),
        "dgrad": _close(dx, xr.grad),
        "wgrad": _close(dv, fmt.values(wm.grad)),
    }
    kernels.gate_errors = errors
    kernels.gate_seconds = time.perf_counter() - start
    bad = {k: v for k, v in errors.items() if not v <= _RTOL}  # `not <=` also catches NaN
    if bad:
        raise KernelGateError(
            f"compiled block kernels for {geo} on {kernels.target} failed the correctness gate "
            f"(relative max error {bad}, tolerance {_RTOL}); they will not be used"
        )
