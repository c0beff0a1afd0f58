"""Irregular kernels at run time: repacking reuses kernels, torch.compile, opcheck, layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.api import sparse_conv2d
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.irregular import random_irregular_mask
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.compiled import CompiledKernels
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D
from mest_compile.compiler.formats.geometry import ConvGeometry

IRREGULAR = family_for("irregular")


def irregular_kernels(geometry: ConvGeometry) -> CompiledKernels:
    return kernels_for(IRREGULAR, geometry)

GEO = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)


def irregular_conv2d_packed(x: torch.Tensor, w: torch.Tensor, fmt: PackedFormat) -> torch.Tensor:
    """The family's differentiable conv through the cached kernels `fmt` was packed for."""
    return irregular_kernels(fmt.geometry).conv(x, w, fmt)


def _mask(seed: int, density: float = 0.3) -> torch.Tensor:
    return random_irregular_mask((16, 8, 3, 3), density, torch.Generator().manual_seed(seed))


def test_registered_for_both_schemes():
    assert family_for("irregular") is IRREGULAR
    assert family_for("filter_balance") is IRREGULAR


def test_repack_within_capacity_reuses_the_compiled_kernels():
    w, x = torch.randn(16, 8, 3, 3), torch.randn(2, 8, 8, 8)
    fmt = irregular_kernels(GEO).pack(_mask(0), capacity=900)
    irregular_conv2d_packed(x, w, fmt)
    builds, reuses = build.CACHE.stats.builds, build.CACHE.stats.reuses
    for seed in (1, 2, 3):
        mask = _mask(seed, 0.2 + 0.15 * seed)
        assert fmt.fits(mask)
        fmt.repack_(mask)
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = irregular_conv2d_packed(xs, ws, fmt)
        y.square().sum().backward()
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = F.conv2d(xr, wr * mask, padding=1)
        ref.square().sum().backward()
        assert torch.allclose(y, ref, atol=1e-4)
        assert torch.allclose(xs.grad, xr.grad, atol=1e-3)
        assert torch.allclose(ws.grad, wr.grad, atol=1e-3)
    assert build.CACHE.stats.builds == builds
    assert build.CACHE.stats.reuses >= reuses + 3


def test_torch_compile_fullgraph():
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    mask = _mask(4)
    fmt = irregular_kernels(GEO).pack(mask)
    kernels = irregular_kernels(fmt.geometry)  # looked up outside: the build cache's lock is not traceable
    fn = torch.compile(lambda x, w: kernels.conv(x, w, fmt).square().sum(), fullgraph=True)
    fn(x, w).backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, padding=1).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-3)
    assert torch.allclose(w.grad, wr.grad, atol=1e-3)


def test_opcheck():
    fmt = irregular_kernels(GEO).pack(_mask(5))
    values = fmt.values(torch.randn(16, 8, 3, 3)).requires_grad_()
    buffers = ([fmt.row_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_val, fmt.dx_off], [fmt.seg_ptr, fmt.x_off])
    args = (torch.randn(2, 8, 8, 8, requires_grad=True), values, *buffers, irregular_kernels(GEO).handle, geometry_list(GEO))
    torch.library.opcheck(PACKED_CONV2D, args)


@pytest.mark.parametrize("case", ["empty_batch", "sum_gradient", "channels_last", "transposed_gradient"])
def test_layouts_and_degenerate_inputs(case):
    """Inputs TVM would reject as non-compact, and a batch of zero images."""
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(8, 4, 3, 3, generator=gen, requires_grad=True)
    mask = random_irregular_mask((8, 4, 3, 3), 0.5, gen)
    n = {"empty_batch": 0, "sum_gradient": 1}.get(case, 3)
    x = torch.randn(n, 4, 6, 6, generator=gen)
    if case == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = sparse_conv2d(x, w, mask, scheme="irregular", padding=1)
    ref_x, ref_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, ref_w * mask, padding=1)
    if case == "transposed_gradient":
        dy = torch.randn(3, 8, 6, 6, generator=gen).transpose(2, 3)
        y.backward(dy)
        ref.backward(dy)
    else:
        y.sum().backward()  # an expanded (stride 0) gradient
        ref.sum().backward()
    assert torch.allclose(y, ref, atol=1e-4)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-4)
    assert torch.allclose(w.grad, ref_w.grad, atol=1e-4)


def test_kernels_are_vectorised_fmas():
    """The inner loops must be vector FMAs over output pixels (not scalar code around the loop)."""
    kernels = irregular_kernels(GEO)
    for which in ("forward", "dgrad", "wgrad"):
        asm = kernels.source(which)
        assert "vfmadd" in asm and ("ymm" in asm or "zmm" in asm), which
