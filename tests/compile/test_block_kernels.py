"""Compiled block kernels against PyTorch: forward, input gradient, masked weight gradient."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mest_compile.compiler.runtime.cache import CACHE
from mest_compile.compiler.formats.block import random_block_mask
from mest_compile.compiler.api import sparse_conv2d

SCHEME = "free_block_prune_column_4"


def check(x, w, mask, stride, padding):
    """Compiled vs masked dense: output, dx, dw (and dw exactly zero off the mask)."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = sparse_conv2d(xs, ws, mask, scheme=SCHEME, stride=stride, padding=padding)
    ref = F.conv2d(xr, wr * mask, stride=stride, padding=padding)
    dy = torch.randn_like(ref)
    y.backward(dy)
    ref.backward(dy)
    scale = lambda t: 1e-4 * max(1.0, float(t.detach().abs().max())) if t.numel() else 1.0  # noqa: E731
    assert y.shape == ref.shape
    assert (y - ref).abs().max() <= scale(ref)
    assert (xs.grad - xr.grad).abs().max() <= scale(xr.grad)
    assert (ws.grad - wr.grad).abs().max() <= scale(wr.grad)
    assert not bool(ws.grad[~mask].any())


GEOMETRIES = [
    # (C, H, W, O, k, stride, padding)
    (8, 8, 8, 16, 3, 1, 1),
    (8, 9, 7, 12, 3, 2, 1),
    (4, 10, 6, 8, 3, 2, 2),
    (5, 7, 9, 8, 3, 1, 0),
    (16, 15, 13, 8, 1, 2, 0),
    (6, 5, 5, 4, 1, 1, 0),
    (3, 4, 4, 8, 3, 1, 2),
    (4, 1, 6, 4, 1, 1, 0),
    # rows wider than 16: one unaligned gradient-scratch copy instead of one per shift
    (3, 5, 21, 8, 3, 1, 1),
    (2, 6, 40, 8, 3, 2, 1),
    # many filter groups: the input gradient sums them in several chunks
    (2, 8, 8, 64, 3, 1, 1),
    (3, 6, 10, 128, 3, 2, 1),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "C{}H{}W{}O{}k{}s{}p{}".format(*g))
@pytest.mark.parametrize("kind", ["random", "sparse", "empty", "dense"])
def test_matches_pytorch(geo, kind):
    c, h, w_, o, k, s, p = geo
    gen = torch.Generator().manual_seed(zlib.crc32(repr((geo, kind)).encode()))
    x = torch.randn(3, c, h, w_, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    density = {"random": 0.4, "sparse": 0.1, "empty": 0.0, "dense": 1.0}[kind]
    mask = random_block_mask(o, (c, k, k), density, gen)  # first filter group always empty
    if kind == "dense":
        mask = torch.ones_like(mask)
    check(x, w, mask, s, p)


def test_any_batch_size_uses_one_build():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(8, 8, 3, 3, generator=gen)
    mask = random_block_mask(8, (8, 3, 3), 0.5, gen)
    check(torch.randn(2, 8, 8, 8, generator=gen), w, mask, 1, 1)
    builds = CACHE.stats.builds
    for n in (1, 5, 16):
        check(torch.randn(n, 8, 8, 8, generator=gen), w, mask, 1, 1)
    assert CACHE.stats.builds == builds


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.integers(1, 9),
    hw=st.tuples(st.integers(3, 12), st.integers(3, 12)),
    groups=st.integers(1, 4),
    k=st.sampled_from([1, 3]),
    s=st.sampled_from([1, 2]),
    p=st.integers(0, 2),
    density=st.sampled_from([0.0, 0.15, 0.5, 1.0]),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_layers(c, hw, groups, k, s, p, density, n, seed):
    gen = torch.Generator().manual_seed(seed)
    o = 4 * groups
    x = torch.randn(n, c, *hw, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    kept = torch.rand(groups, c * k * k, generator=gen) < density
    mask = kept[:, None, :].expand(groups, 4, -1).reshape(o, c, k, k)
    check(x, w, mask, s, p)


@pytest.mark.parametrize(
    "cin,cout,size,stride", [(32, 32, 32, 1), (32, 64, 32, 2), (64, 64, 16, 1), (64, 128, 16, 2), (128, 128, 8, 1)]
)
def test_mest_resnet32_layers(cin, cout, size, stride):
    """The five distinct sparse convs of MEST's wide ResNet-32, at 90% block sparsity."""
    gen = torch.Generator().manual_seed(cin + cout + size)
    x = torch.randn(2, cin, size, size, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    check(x, w, random_block_mask(cout, (cin, 3, 3), 0.1, gen), stride, 1)


def test_chunked_input_gradient_is_exercised():
    from mest_compile.compiler.families import family_for
    from mest_compile.compiler.formats import ConvGeometry
    from mest_compile.compiler.runtime.cache import kernels_for

    kernels = kernels_for(family_for("block"), ConvGeometry(2, 8, 8, 64, 3, 3, 1, 1))
    assert kernels.tiles.dgrad_chunk < 64 // 4


@pytest.mark.parametrize("case", ["empty_batch", "sum_gradient", "channels_last", "transposed_gradient"])
def test_layouts_and_degenerate_inputs(case):
    """Inputs TVM would reject as non-compact, and a batch of zero images."""
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(8, 4, 3, 3, generator=gen, requires_grad=True)
    mask = random_block_mask(8, (4, 3, 3), 0.5, gen)
    n = {"empty_batch": 0, "sum_gradient": 1}.get(case, 3)
    x = torch.randn(n, 4, 6, 6, generator=gen)
    if case == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = sparse_conv2d(x, w, mask, scheme=SCHEME, padding=1)
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
