"""Compiled channel kernels against PyTorch: forward, input gradient, masked weight gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mest_compile.compiler.api import sparse_conv2d
from mest_compile.compiler.runtime.cache import CACHE

SCHEME = "channel"

GEOMETRIES = [
    # (C, H, W, O, k, stride, padding)
    (8, 8, 8, 16, 3, 1, 1),
    (8, 9, 7, 12, 3, 2, 1),
    (4, 10, 6, 8, 3, 2, 2),
    (5, 7, 9, 8, 3, 1, 0),  # C not a multiple of the channel tile: a tail tile
    (16, 15, 13, 8, 1, 2, 0),
    (6, 5, 5, 4, 1, 1, 0),
    (3, 4, 4, 8, 3, 1, 2),
    (4, 1, 6, 4, 1, 1, 0),
    (3, 5, 21, 8, 3, 1, 1),  # rows wider than 16: one unaligned gradient-scratch copy
    (2, 6, 40, 8, 3, 2, 1),
    (3, 6, 10, 32, 3, 2, 1),  # many filters: several balanced filter tiles
]


def check(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, stride: int, padding: int) -> None:
    """Compiled vs masked dense: output, dx, dw (and dw exactly zero off the mask)."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = sparse_conv2d(xs, ws, mask, scheme=SCHEME, stride=stride, padding=padding)
    ref = F.conv2d(xr, wr * mask, stride=stride, padding=padding)
    dy = torch.randn_like(ref)
    y.backward(dy)
    ref.backward(dy)

    def tol(t: torch.Tensor) -> float:
        return 1e-4 * max(1.0, float(t.detach().abs().max())) if t.numel() else 1.0

    assert y.shape == ref.shape
    assert (y - ref).abs().max() <= tol(ref)
    assert (xs.grad - xr.grad).abs().max() <= tol(xr.grad)
    assert (ws.grad - wr.grad).abs().max() <= tol(wr.grad)
    assert not bool(ws.grad[~mask].any())


def channel_mask(out: int, shape: tuple[int, ...], kept: list[bool]) -> torch.Tensor:
    on = torch.tensor(kept, dtype=torch.bool)
    return on.reshape(-1, 1, 1, 1).expand(out, *shape).clone()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    geo=st.sampled_from(GEOMETRIES),
    batch=st.integers(1, 4),
    data=st.data(),
)
def test_matches_pytorch(geo, batch, data):
    c, h, w_, o, k, s, p = geo
    kept = data.draw(st.lists(st.booleans(), min_size=o, max_size=o), label="kept filters")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w_, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    check(x, w, channel_mask(o, (c, k, k), kept), s, p)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "C{}H{}W{}O{}k{}s{}p{}".format(*g))
@pytest.mark.parametrize("kind", ["pruned", "one", "dense"])
def test_extreme_masks(geo, kind):
    c, h, w_, o, k, s, p = geo
    gen = torch.Generator().manual_seed(o * 131 + h)
    kept = {"pruned": [False] * o, "one": [i == o - 1 for i in range(o)], "dense": [True] * o}[kind]
    check(torch.randn(3, c, h, w_, generator=gen), torch.randn(o, c, k, k, generator=gen),
          channel_mask(o, (c, k, k), kept), s, p)


def test_mest_layer_counts_at_batch_of_odd_size():
    # MEST's own shapes at reduced resolution: 3 of 32, 6 of 64, 13 of 128 filters kept.
    from mest_compile.sparsity.schemes import mask_for

    gen = torch.Generator().manual_seed(3)
    for c, o, size, s in ((32, 32, 8, 1), (32, 64, 8, 2), (64, 128, 4, 1)):
        w = torch.randn(o, c, 3, 3, generator=gen)
        check(torch.randn(5, c, size, size, generator=gen), w, mask_for(w, SCHEME, 0.9), s, 1)


def test_any_batch_size_uses_one_build():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    mask = channel_mask(16, (8, 3, 3), [i % 3 == 0 for i in range(16)])
    check(torch.randn(2, 8, 8, 8, generator=gen), w, mask, 1, 1)
    builds = CACHE.stats.builds
    for n in (1, 5, 16):
        check(torch.randn(n, 8, 8, 8, generator=gen), w, mask, 1, 1)
    assert CACHE.stats.builds == builds
