"""Runtime behaviour of the pattern family: repacking, torch.compile, opcheck, graph rewriting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.pattern import random_pattern_mask
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.compiled import CompiledKernels
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.errors import MestError

PATTERN = family_for("pattern")


def pattern_kernels(geometry: ConvGeometry) -> CompiledKernels:
    return kernels_for(PATTERN, geometry)


def pattern_conv2d_packed(x: torch.Tensor, w: torch.Tensor, fmt: PackedFormat) -> torch.Tensor:
    """The family's differentiable conv through the cached kernels `fmt` was packed for."""
    return pattern_kernels(fmt.geometry).conv(x, w, fmt)


def test_both_schemes_use_the_pattern_family():
    assert family_for("pattern") is PATTERN
    assert family_for("pattern+filter_balance") is PATTERN
    assert PATTERN.supports(ConvGeometry(4, 6, 6, 8, 1, 1)) is not None


def test_repack_within_capacity_reuses_the_compiled_kernels():
    geo = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 8, 3, 3, generator=gen), torch.randn(2, 8, 8, 8, generator=gen)
    fmt = pattern_kernels(geo).pack(random_pattern_mask((16, 8, 3, 3), 0.2, gen), capacity=100)
    builds = build.CACHE.stats.builds
    for density in (0.1, 0.5, 0.7):
        mask = random_pattern_mask((16, 8, 3, 3), density, gen)
        fmt.repack_(mask)
        y = pattern_conv2d_packed(x, w, fmt)
        assert torch.allclose(y, F.conv2d(x, w * mask, padding=1), atol=1e-4)
    assert build.CACHE.stats.builds == builds
    with pytest.raises(MestError, match="capacity"):
        fmt.repack_(torch.ones(16, 8, 3, 3, dtype=torch.bool) & random_pattern_mask((16, 8, 3, 3), 1.0, gen))


def test_torch_compile_and_opcheck():
    geo = ConvGeometry(8, 8, 8, 16, 3, 3, stride=2, padding=1)
    gen = torch.Generator().manual_seed(5)
    mask = random_pattern_mask((16, 8, 3, 3), 0.3, gen)
    fmt = pattern_kernels(geo).pack(mask)
    w = torch.randn(16, 8, 3, 3, generator=gen, requires_grad=True)
    x = torch.randn(2, 8, 8, 8, generator=gen, requires_grad=True)
    kernels = pattern_kernels(fmt.geometry)  # looked up outside: the build cache's lock is not traceable
    fn = torch.compile(lambda x, w: kernels.conv(x, w, fmt).square().sum(), fullgraph=True)
    fn(x, w).backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, stride=2, padding=1).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-3)
    assert torch.allclose(w.grad, wr.grad, atol=1e-3)
    values = fmt.values(w.detach()).requires_grad_()
    buffers = ([fmt.fwd_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_ker, fmt.dx_off], [fmt.dx_ptr, fmt.dx_ker, fmt.dx_off])
    args = (x.detach().requires_grad_(), values, *buffers, pattern_kernels(geo).handle, geometry_list(geo))
    torch.library.opcheck(PACKED_CONV2D, args)


def test_graph_rewrite_runs_the_pattern_forward():
    from mest_compile.compiler.graph.export import build as build_graph
    from mest_compile.compiler.graph.export import run
    from mest_compile.compiler.graph.rewrite import rewrite
    from mest_compile.compiler.graph.trace import model_tensors, trace
    from mest_compile.sparsity.module import sparsify
    from mest_compile.sparsity.profile import uniform_profile
    from mest_compile.train.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    sparsify(model, "pattern+filter_balance", uniform_profile(model, 0.9))
    rewritten = rewrite(trace(model, torch.randn(2, 3, 8, 8)), target="host")
    assert "pattern_fwd" in rewritten.report()
    executable = build_graph(rewritten)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        got = run(executable, x, rewritten.arguments(model_tensors(model)))
        want = model.eval()(x)
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6


def test_aligned_input_layout_knob():
    """The tuning knob that pads the input scratch's column phases to whole vectors."""
    import dataclasses

    from mest_compile.compiler.runtime.compiled import compile_kernels
    from mest_compile.compiler.target import as_target
    from mest_compile.compiler.kernels.pattern_taps import input_layout
    from mest_compile.schedules.pattern_host import PatternTiles

    geo = ConvGeometry(4, 16, 16, 8, 3, 3, stride=2, padding=1)
    kernels = compile_kernels(PATTERN, geo, as_target("host"), tiles=dataclasses.replace(PatternTiles.default(geo, 2), aligned_input=True))
    layout = input_layout(geo, kernels.tiles.aligned_input)
    assert layout.aligned and layout.phase_w % 8 == 0
    gen = torch.Generator().manual_seed(2)
    mask = random_pattern_mask((8, 4, 3, 3), 0.5, gen)
    x, w = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(8, 4, 3, 3, generator=gen)
    fmt = kernels.pack(mask, capacity=40)
    wm = (w * mask).requires_grad_()
    ref = F.conv2d(x, wm, stride=2, padding=1)
    dy = torch.randn_like(ref)
    ref.backward(dy)
    values = fmt.values(w).contiguous()
    y, dv = torch.empty_like(ref), torch.empty_like(values)
    kernels.forward(x, values, fmt.fwd_ptr, fmt.x_off, y)
    kernels.wgrad(x, dy, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, dv)
    assert torch.allclose(y, ref.detach(), atol=1e-4)
    assert torch.allclose(dv, fmt.values(wm.grad), atol=1e-4)
