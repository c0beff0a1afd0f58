"""Channel kernels at run time: repacking without rebuilds, torch.compile, opcheck, module backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.api import compile_model
from mest_compile.compiler.formats.channel import random_channel_mask
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.compiled import CompiledKernels
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.policy import RecompilePolicy
from mest_compile.sparsity.module import SparseConv2d

CHANNEL = family_for("channel")


def channel_kernels(geometry: ConvGeometry) -> CompiledKernels:
    return kernels_for(CHANNEL, geometry)

SCHEME = "channel"
GEO = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)


def channel_conv2d_packed(x: torch.Tensor, w: torch.Tensor, fmt: PackedFormat) -> torch.Tensor:
    """The family's differentiable conv through the cached kernels `fmt` was packed for."""
    return channel_kernels(fmt.geometry).conv(x, w, fmt)


def _mask(seed: int, density: float = 0.3) -> torch.Tensor:
    return random_channel_mask((16, 8, 3, 3), density, torch.Generator().manual_seed(seed))


def test_repack_within_capacity_reuses_the_compiled_kernels():
    w, x = torch.randn(16, 8, 3, 3), torch.randn(2, 8, 8, 8)
    fmt = channel_kernels(GEO).pack(_mask(0), capacity=16)
    channel_conv2d_packed(x, w, fmt)
    builds = build.CACHE.stats.builds
    for seed in (1, 2, 3):
        mask = _mask(seed, 0.2 + 0.2 * seed)
        fmt.repack_(mask)
        y = channel_conv2d_packed(x, w, fmt)
        assert torch.allclose(y, F.conv2d(x, w * mask, padding=1), atol=1e-4)
    fmt.repack_(torch.zeros(16, 8, 3, 3, dtype=torch.bool))  # fully pruned: all zeros
    assert not bool(channel_conv2d_packed(x, w, fmt).any())
    assert build.CACHE.stats.builds == builds


def test_torch_compile_fullgraph():
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    mask = _mask(4)
    fmt = channel_kernels(GEO).pack(mask)
    kernels = channel_kernels(fmt.geometry)  # looked up outside: the build cache's lock is not traceable
    fn = torch.compile(lambda x, w: kernels.conv(x, w, fmt).square().sum(), fullgraph=True)
    fn(x, w).backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, padding=1).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-3)
    assert torch.allclose(w.grad, wr.grad, atol=1e-3)


def test_opcheck():
    fmt = channel_kernels(GEO).pack(_mask(5))
    values = fmt.values(torch.randn(16, 8, 3, 3)).requires_grad_()
    buffers = ([fmt.kept, fmt.slot], [fmt.kept], [fmt.kept])
    args = (torch.randn(2, 8, 8, 8, requires_grad=True), values, *buffers, channel_kernels(GEO).handle, geometry_list(GEO))
    torch.library.opcheck(PACKED_CONV2D, args)


def test_module_backend_repacks_and_never_recompiles():
    torch.manual_seed(0)
    conv = SparseConv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1, bias=True), SCHEME, sparsity=0.75)
    report = compile_model(nn.Sequential(conv), policy=RecompilePolicy(max_drift=1.0))
    assert report["0.weight"]["status"] == "compiled"
    x = torch.randn(2, 8, 8, 8)
    assert torch.allclose(conv(x), conv.to_dense()(x), atol=1e-4)
    builds = build.CACHE.stats.builds
    for sparsity in (0.75, 0.5, 0.97):  # same count, overflow, fully pruned
        conv.set_mask_(conv.scheme.prune(torch.randn(16, 8, 3, 3), sparsity))
        with torch.no_grad():
            conv.weight.add_(torch.randn_like(conv.weight)).mul_(conv.mask)
        assert torch.allclose(conv(x), conv.to_dense()(x), atol=1e-4)
    stats = conv.backend.stats
    assert stats.repacks >= 1 and stats.overflows == 1
    assert build.CACHE.stats.builds == builds  # the kept count is a runtime size
