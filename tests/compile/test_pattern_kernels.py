"""Compiled pattern kernels against PyTorch: forward, input gradient, masked weight gradient."""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mest_compile import mask_for
from mest_compile.compiler.api import sparse_conv2d
from mest_compile.compiler.runtime.compiled import compile_kernels
from mest_compile.compiler.formats.pattern import index_dtype, random_pattern_mask
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.gate import reference, relative_error
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.schemes.pattern import PATTERNS

PATTERN = family_for("pattern")

SCHEME = "pattern+filter_balance"


def check(x, w, mask, stride, padding, scheme=SCHEME):
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
    if x.shape[0] == 0:
        assert not bool(ws.grad.any())
        return
    assert (y - ref).abs().max() <= scale(ref)
    assert (xs.grad - xr.grad).abs().max() <= scale(xr.grad)
    assert (ws.grad - wr.grad).abs().max() <= scale(wr.grad)
    assert not bool(ws.grad[~mask].any())


GEOMETRIES = [
    # (C, H, W, O, stride, padding)
    (8, 8, 8, 16, 1, 1),
    (8, 9, 7, 12, 2, 1),
    (4, 10, 6, 8, 2, 2),
    (5, 7, 9, 8, 1, 0),
    (3, 4, 4, 8, 1, 2),
    (4, 1, 6, 4, 1, 1),
    # rows wider than 16: one unaligned gradient-scratch copy instead of one per shift
    (3, 5, 21, 8, 1, 1),
    (2, 6, 40, 8, 2, 1),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "C{}H{}W{}O{}s{}p{}".format(*g))
@pytest.mark.parametrize("kind", ["random", "balanced", "empty", "full"])
def test_matches_pytorch(geo, kind):
    c, h, w_, o, s, p = geo
    gen = torch.Generator().manual_seed(zlib.crc32(repr((geo, kind)).encode()))
    x = torch.randn(3, c, h, w_, generator=gen)
    w = torch.randn(o, c, 3, 3, generator=gen)
    if kind == "balanced":  # filter balance: every filter but the first keeps the same count
        mask = random_pattern_mask(tuple(w.shape), 0.0, gen, per_filter=max(1, c // 3))
    else:
        density = {"random": 0.4, "empty": 0.0, "full": 1.0}[kind]
        mask = random_pattern_mask(tuple(w.shape), density, gen)  # first filter always empty
    check(x, w, mask, s, p)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    per_filter=st.sampled_from([None, 1, 3]),
    n=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_random_masks_and_batches(density, per_filter, n, seed):
    """Masks and batch sizes vary freely on one compiled geometry (no rebuild per example)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 8, 8, generator=gen)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    check(x, w, random_pattern_mask(tuple(w.shape), density, gen, per_filter), 2, 1, scheme="pattern")


@pytest.mark.slow
@pytest.mark.parametrize(
    "cin,cout,size,stride", [(32, 32, 32, 1), (32, 64, 32, 2), (64, 64, 16, 1), (64, 128, 16, 2), (128, 128, 8, 1)]
)
def test_mest_resnet32_layers(cin, cout, size, stride):
    """The five distinct sparse convs of MEST's wide ResNet-32, masks from the training side at 90%."""
    gen = torch.Generator().manual_seed(cin + cout + size)
    x = torch.randn(2, cin, size, size, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    check(x, w, mask_for(w, SCHEME, 0.9), stride, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_int32_indices_past_the_int16_kernel_count(stride):
    """256 x 256 kernels do not fit int16: the buffers and kernels take int32, and with 60% kept
    the pointers pass 32767 too."""
    geo = ConvGeometry(256, 4, 4, 256, 3, 3, stride=stride, padding=1)
    assert index_dtype(geo) == "int32"
    gen = torch.Generator().manual_seed(256 + stride)
    x, w = torch.randn(2, 256, 4, 4, generator=gen), torch.randn(256, 256, 3, 3, generator=gen)
    mask = random_pattern_mask(tuple(w.shape), 0.6, gen)
    assert int(mask.reshape(256 * 256, 9).any(1).sum()) > 2**15
    check(x, w, mask, stride, 1)


@pytest.mark.parametrize("cols", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_weight_gradient_widths_cover_every_run_length(cols, stride):
    """The weight gradient takes each (channel, pattern) run in blocks of `cols`, then halves.

    One pattern per channel and every kernel kept gives runs of all 15 filters (the first is
    empty), so the widest blocks and every remainder width run.
    """
    geo = ConvGeometry(6, 8, 8, 16, 3, 3, stride=stride, padding=1)
    tiles = dataclasses.replace(PATTERN.default_tiles(geo, as_target("host")), wgrad_cols=cols)
    kernels = compile_kernels(PATTERN, geo, as_target("host"), tiles)
    gen = torch.Generator().manual_seed(cols * 10 + stride)
    ids = torch.randint(0, len(PATTERNS), (6,), generator=gen)
    mask = PATTERNS[ids].unsqueeze(0).repeat(16, 1, 1, 1)
    mask[0] = False
    fmt = kernels.pack(mask)
    x, w = torch.randn(3, 6, 8, 8, generator=gen), torch.randn(16, 6, 3, 3, generator=gen)
    dy = torch.randn(3, 16, geo.out_h, geo.out_w, generator=gen)
    dv = torch.empty(fmt.capacity, 4)
    kernels.wgrad(x, dy, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, dv)
    got = torch.zeros(w.numel()).index_put_((fmt.flat_idx[: fmt.nnz].reshape(-1),), dv[: fmt.nnz].reshape(-1)).view_as(w)
    want = reference("wgrad", x, w, mask, dy, stride, 1)
    assert relative_error(got, want) < 1e-5


def test_refuses_non_3x3_layers():
    with pytest.raises(MestError, match="3x3"):
        sparse_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 4, 1, 1), torch.ones(8, 4, 1, 1, dtype=torch.bool),
                      scheme="pattern")
