"""The block scheme's three kernels compiled for the `cuda` preset and run on the GPU, against masked dense.

The kernels are what the compiler builds for a GPU target (`compile_kernels`: the family's GPU
templates, bound to threads by the GPU target family); their arguments are what the OpenCL
launcher passes (`gpu_kernel_args`). Each output starts as NaN, so an element a kernel never
writes fails the comparison.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.formats.geometry import ConvGeometry

GEOMETRIES = {
    "3x3-stride1": ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1),
    "3x3-stride2-odd": ConvGeometry(8, 9, 7, 12, 3, 3, stride=2, padding=1),
    "1x1-stride2": ConvGeometry(6, 7, 7, 8, 1, 1, stride=2, padding=0),
}


def run_on_gpu(kernel: Any, args: list[torch.Tensor]) -> torch.Tensor:
    """Call a compiled kernel with `args` copied to GPU 0 (the output, last, filled with NaN); its output."""
    import tvm

    device = tvm.cuda(0)
    *inputs, out = args
    arrays = [tvm.runtime.tensor(a.detach().contiguous().numpy(), device) for a in inputs]
    arrays.append(tvm.runtime.tensor(torch.full_like(out, float("nan")).numpy(), device))
    kernel(*arrays)
    device.sync()
    return torch.from_numpy(arrays[-1].numpy())


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_block_kernels_on_the_gpu_match_masked_dense(cuda_target: Any, name: str) -> None:
    from mest_compile.compiler.families import PHASES, family_for
    from mest_compile.compiler.runtime.compiled import compile_kernels

    geo = GEOMETRIES[name]
    family = family_for("block")
    assert cuda_target.family.phases(family) == PHASES  # forward and both gradients exist on GPUs
    kernels = compile_kernels(family, geo, cuda_target)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, geo.in_channels, geo.in_h, geo.in_w, generator=gen, requires_grad=True)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen, requires_grad=True)
    mask = family.random_mask(tuple(w.shape), gen)  # with an empty block
    dy = torch.randn(2, geo.out_channels, geo.out_h, geo.out_w, generator=gen)
    y = F.conv2d(x, w * mask, stride=geo.stride, padding=geo.padding)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    fmt = family.forward_format(geo, mask)
    # The weight-gradient kernel writes the kept values only, packed like the forward's values.
    want = {"forward": y.detach(), "dgrad": dx, "wgrad": fmt.values(dw)}

    values = fmt.values(w.detach())
    for which in PHASES:
        args = family.gpu_kernel_args(which, x.detach(), values, dy, fmt)
        got = run_on_gpu(getattr(kernels, which), args)
        torch.testing.assert_close(got, want[which], rtol=1e-4, atol=1e-4, msg=lambda m, w=which: f"{w}: {m}")
