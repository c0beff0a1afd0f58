"""Runtime behaviour: cache and repacking, torch.compile, the gate's refusal, module backends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.api import compile_model, sparse_conv2d
from mest_compile.compiler.runtime.gate import KernelGateError
from mest_compile.compiler.runtime.policy import RecompilePolicy
from mest_compile.compiler.formats import ConvGeometry
from mest_compile.compiler.formats.block import random_block_mask
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.compiled import CompiledKernels
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D
from mest_compile.sparsity.module import SparseConv2d

BLOCK = family_for("block")


def block_kernels(geometry: ConvGeometry) -> CompiledKernels:
    return kernels_for(BLOCK, geometry)

SCHEME = "free_block_prune_column_4"
GEO = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)


def block_conv2d_packed(x: torch.Tensor, w: torch.Tensor, fmt: PackedFormat) -> torch.Tensor:
    """The family's differentiable conv through the cached kernels `fmt` was packed for."""
    return block_kernels(fmt.geometry).conv(x, w, fmt)


def _mask(seed, density=0.3):
    return random_block_mask(16, (8, 3, 3), density, torch.Generator().manual_seed(seed))


def test_repack_within_capacity_reuses_the_compiled_kernels():
    w, x = torch.randn(16, 8, 3, 3), torch.randn(2, 8, 8, 8)
    fmt = block_kernels(GEO).pack(_mask(0), capacity=200)
    block_conv2d_packed(x, w, fmt)
    builds, reuses = build.CACHE.stats.builds, build.CACHE.stats.reuses
    for seed in (1, 2, 3):
        mask = _mask(seed, 0.2 + 0.1 * seed)
        fmt.repack_(mask)
        y = block_conv2d_packed(x, w, fmt)
        assert torch.allclose(y, F.conv2d(x, w * mask, padding=1), atol=1e-4)
    assert build.CACHE.stats.builds == builds
    assert build.CACHE.stats.reuses >= reuses + 3


def test_torch_compile_fullgraph():
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    mask = _mask(4)
    fmt = block_kernels(GEO).pack(mask)
    kernels = block_kernels(fmt.geometry)  # looked up outside: the build cache's lock is not traceable
    fn = torch.compile(lambda x, w: kernels.conv(x, w, fmt).square().sum(), fullgraph=True)
    fn(x, w).backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, padding=1).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-3)
    assert torch.allclose(w.grad, wr.grad, atol=1e-3)


def test_opcheck():
    fmt = block_kernels(GEO).pack(_mask(5))
    values = fmt.values(torch.randn(16, 8, 3, 3)).requires_grad_()
    buffers = ([fmt.group_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_blk, fmt.dx_off], [fmt.group_ptr, fmt.x_off])
    args = (torch.randn(2, 8, 8, 8, requires_grad=True), values, *buffers, block_kernels(GEO).handle, geometry_list(GEO))
    torch.library.opcheck(PACKED_CONV2D, args)


def test_a_kernel_failing_the_gate_is_never_used(monkeypatch):
    geo = ConvGeometry(4, 6, 6, 8, 3, 3, stride=1, padding=1)
    real = build.build_kernels

    def broken(*args, **kwargs):
        kernels = real(*args, **kwargs)
        good = kernels.forward
        kernels.forward = lambda x, v, gp, xo, y: (good(x, v, gp, xo, y), y.mul_(1.01))
        return kernels

    monkeypatch.setattr(build, "build_kernels", broken)
    build.CACHE.clear()
    try:
        with pytest.raises(KernelGateError, match="correctness gate"):
            block_kernels(geo)
        x, w = torch.randn(2, 4, 6, 6), torch.randn(8, 4, 3, 3)
        mask = random_block_mask(8, (4, 3, 3), 0.5, torch.Generator().manual_seed(0))
        with pytest.warns(UserWarning, match="masked dense conv"):
            y = sparse_conv2d(x, w, mask, scheme=SCHEME, padding=1)
        assert torch.allclose(y, F.conv2d(x, w * mask, padding=1))
    finally:
        build.CACHE.clear()


def test_module_backend_repacks_or_rebuilds_per_policy():
    torch.manual_seed(0)
    conv = SparseConv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1, bias=True), SCHEME, sparsity=0.8)
    report = compile_model(nn.Sequential(conv), policy=RecompilePolicy(max_drift=1.0))
    assert report["0.weight"]["status"] == "compiled"
    x = torch.randn(2, 8, 8, 8)
    assert torch.allclose(conv(x), conv.to_dense()(x), atol=1e-4)
    builds = build.CACHE.stats.builds
    # Same density: in place. Denser than the capacity: overflow. Then in place again. Much
    # sparser: a quarter of the buffers would idle, so smaller ones are built.
    steps = [(0.8, "repacks"), (0.5, "overflows"), (0.5, "repacks"), (0.9, "rebuilds")]
    for sparsity, counter in steps:
        before = conv.backend.stats.to_dict()
        conv.set_mask_(conv.scheme.prune(torch.randn(16, 8, 3, 3), sparsity))
        with torch.no_grad():
            conv.weight.add_(torch.randn_like(conv.weight)).mul_(conv.mask)
        assert torch.allclose(conv(x), conv.to_dense()(x), atol=1e-4)
        after = conv.backend.stats.to_dict()
        assert after[counter] == before[counter] + 1, (sparsity, counter, before, after)
    assert conv.backend.stats.rebuilds == 2  # the overflow and the padding
    assert build.CACHE.stats.builds == builds  # nnz is a runtime size: no mutation recompiles


def test_signature_drift_rebuilds():
    torch.manual_seed(2)
    conv = SparseConv2d.from_dense(nn.Conv2d(8, 32, 3, padding=1), SCHEME, sparsity=0.5)
    compile_model(nn.Sequential(conv), policy=RecompilePolicy(max_drift=0.1, max_padding=1.0))
    x = torch.randn(1, 8, 6, 6)
    conv(x)
    # Same number of blocks, concentrated in two filter groups: the work histogram drifts.
    mask = torch.zeros(32, 8, 3, 3, dtype=torch.bool)
    mask[:8] = True
    mask[8:16, :1] = True
    conv.set_mask_(mask)
    assert torch.allclose(conv(x), conv.to_dense()(x), atol=1e-4)
    assert conv.backend.stats.rebuilds == 1 and conv.backend.stats.repacks == 0


def test_torch_compile_of_a_model_with_compiled_layers():
    torch.manual_seed(1)
    model = nn.Sequential(
        SparseConv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1), SCHEME, sparsity=0.8),
        nn.ReLU(),
        SparseConv2d.from_dense(nn.Conv2d(16, 16, 3, padding=1, stride=2), SCHEME, sparsity=0.8),
    )
    dense = nn.Sequential(model[0].to_dense(), nn.ReLU(), model[2].to_dense())
    assert {e['status'] for e in compile_model(model).values()} == {'compiled'}
    x = torch.randn(2, 8, 8, 8)
    y = torch.compile(model)(x)
    y.square().sum().backward()
    ref = dense(x)
    ref.square().sum().backward()
    assert torch.allclose(y, ref, atol=1e-4)
    for sparse, plain in ((model[0], dense[0]), (model[2], dense[2])):
        assert torch.allclose(sparse.weight.grad, plain.weight.grad * sparse.mask, atol=1e-3)


def test_identical_layers_share_one_fallback_verdict():
    torch.manual_seed(3)
    model = nn.Sequential(*(SparseConv2d.from_dense(nn.Conv2d(16, 16, 3, padding=1), SCHEME, sparsity=0.8)
                            for _ in range(3)))
    report = compile_model(model, example_input=torch.randn(4, 16, 8, 8))
    first = report["0.weight"]
    assert first["measured_with"] == "0.weight" and first["speedup"] > 0
    for name in ("1.weight", "2.weight"):  # measured once: the same verdict, whatever the timing noise
        assert report[name]["measured_with"] == "0.weight"
        assert report[name]["speedup"] == first["speedup"] and report[name]["status"] == first["status"]


def test_a_layer_past_the_int16_bound_runs_on_int32_indices():
    geo = ConvGeometry(64, 34, 34, 8, 3, 3, stride=1, padding=1)  # input scratch > 2**16 floats
    mask = random_block_mask(8, (64, 3, 3), 0.3, torch.Generator().manual_seed(9))
    fmt = block_kernels(geo).pack(mask)
    assert fmt.x_off.dtype == fmt.dx_off.dtype == torch.int32
    x = torch.randn(2, 64, 34, 34, requires_grad=True)
    w = torch.randn(8, 64, 3, 3, requires_grad=True)
    dy = torch.randn(2, 8, 34, 34)
    block_conv2d_packed(x, w, fmt).backward(dy)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, padding=1).backward(dy)
    assert torch.allclose(x.grad, xr.grad, atol=1e-3)
    assert torch.allclose(w.grad, wr.grad * mask, atol=1e-3)
