"""Compiled irregular kernels against PyTorch: forward, input gradient, masked weight gradient."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mest_compile.compiler.runtime import cache as build
from mest_compile.compiler.api import sparse_conv2d
from mest_compile.compiler.formats.irregular import random_irregular_mask
from mest_compile.sparsity.schemes import mask_for


def check(x, w, mask, stride, padding, scheme="irregular"):
    """Compiled vs masked dense: output, dx, dw (and dw exactly zero off the mask)."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = sparse_conv2d(xs, ws, mask, scheme=scheme, stride=stride, padding=padding)
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
    (4, 10, 6, 7, 3, 2, 2),
    (5, 7, 9, 3, 3, 1, 0),
    (16, 15, 13, 8, 1, 2, 0),
    (3, 4, 4, 5, 3, 1, 2),
    # rows wider than 16: one unaligned gradient-scratch copy instead of one per shift
    (3, 5, 21, 6, 3, 1, 1),
    # many filters: the input gradient sums them in several chunks
    (2, 8, 8, 64, 3, 1, 1),
    (3, 6, 10, 100, 3, 2, 1),
    # large planes: the weight gradient walks the input channels in several blocks
    (6, 30, 34, 5, 3, 1, 1),
    (5, 33, 30, 4, 3, 2, 1),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "C{}H{}W{}O{}k{}s{}p{}".format(*g))
@pytest.mark.parametrize("kind", ["random", "sparse", "empty", "dense"])
def test_matches_pytorch(geo, kind):
    c, h, w_, o, k, s, p = geo
    gen = torch.Generator().manual_seed(zlib.crc32(repr((geo, kind)).encode()))
    x = torch.randn(3, c, h, w_, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    if kind == "empty":
        mask = torch.zeros(o, c, k, k, dtype=torch.bool)  # a fully pruned layer
    elif kind == "dense":
        mask = torch.ones(o, c, k, k, dtype=torch.bool)
    else:  # filter 0 and input channel 0 empty
        mask = random_irregular_mask((o, c, k, k), {"random": 0.4, "sparse": 0.1}[kind], gen)
    check(x, w, mask, s, p)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    geo=st.sampled_from(GEOMETRIES),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_random_masks(geo, density, n, seed):
    """Any bool mask is legal: random densities, batch sizes, empty filters and channels."""
    c, h, w_, o, k, s, p = geo
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(o, c, k, k, generator=gen) < density
    check(torch.randn(n, c, h, w_, generator=gen), torch.randn(o, c, k, k, generator=gen), mask, s, p)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.integers(1, 6),
    hw=st.tuples(st.integers(3, 11), st.integers(3, 11)),
    o=st.integers(1, 9),
    k=st.sampled_from([1, 3]),
    s=st.sampled_from([1, 2]),
    p=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_random_layers(c, hw, o, k, s, p, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(o, c, k, k, generator=gen) < 0.3
    check(torch.randn(2, c, *hw, generator=gen), torch.randn(o, c, k, k, generator=gen), mask, s, p)


@pytest.mark.parametrize("scheme", ["irregular", "filter_balance"])
def test_training_side_masks(scheme):
    """Masks from the real training-side schemes at 90% (filter_balance keeps whole kernels)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(32, 16, 3, 3, generator=gen)
    mask = mask_for(w, scheme, 0.9).bool()
    check(torch.randn(2, 16, 8, 8, generator=gen), w, mask, 2, 1, scheme=scheme)


def test_any_batch_size_uses_one_build():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    mask = random_irregular_mask((16, 8, 3, 3), 0.3, gen)
    check(torch.randn(2, 8, 8, 8, generator=gen), w, mask, 1, 1)
    builds = build.CACHE.stats.builds
    for n in (1, 5, 16):
        check(torch.randn(n, 8, 8, 8, generator=gen), w, mask, 1, 1)
    assert build.CACHE.stats.builds == builds
