"""Training steps of every scheme on OpenCL kernels (PoCL), against masked dense; what moves to the device.

The device backend keeps each layer's index buffers on the device between steps (they move when a
mask is packed, and afterwards only those a mutation changed) and reuses the forward's device
copies of the input and the packed values in both gradient kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.devices.opencl import Context
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.opencl_backend import OpenCLConvBackend
from mest_compile.sparsity.module import SparseConv2d

SCHEMES = ("block", "pattern+filter_balance", "channel", "irregular")


def _model(scheme: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        SparseConv2d.from_dense(nn.Conv2d(4, 8, 3, padding=1), scheme, sparsity=0.5), nn.ReLU(),
        SparseConv2d.from_dense(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), scheme, sparsity=0.6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )


def _train(model: nn.Module, steps: int) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(4, 4, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _sparse(model: nn.Module) -> list[SparseConv2d]:
    return [m for m in model if isinstance(m, SparseConv2d)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_training_steps_with_opencl_kernels_follow_masked_dense(opencl_context: Context, scheme: str) -> None:
    device, reference = _model(scheme, 0), _model(scheme, 0)
    layers = _sparse(device)
    for layer in layers:
        layer.backend = OpenCLConvBackend(family_for(scheme), "mali", opencl_context)
    got, want = _train(device, 3), _train(reference, 3)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4, (got, want)
    for layer, ref in zip(layers, _sparse(reference), strict=True):
        assert torch.allclose(layer.weight, ref.weight, atol=1e-5)
        assert torch.all(layer.weight.grad[~layer.mask] == 0)  # the gradient is restricted to the mask
    # The gate's 3 launches, then per step a forward and a weight gradient, plus an input gradient
    # where the input needs one (not the first layer's).
    assert [layer.backend.stats.launches for layer in layers] == [3 + 3 * 2, 3 + 3 * 3]


def test_index_buffers_move_once_per_packing_and_a_mutation_moves_what_changed(opencl_context: Context) -> None:
    model = _model("irregular", 0)
    layer = _sparse(model)[0]
    layer.backend = backend = OpenCLConvBackend(family_for("irregular"), "mali", opencl_context)
    _train(model, 1)
    after_one = backend.stats.index_uploads
    _train(model, 2)
    assert backend.stats.index_uploads == after_one  # no mutation: the index buffers stayed on the device
    with torch.no_grad():  # a mutation that keeps the count: move one kept weight of filter 3
        kept, pruned = layer.mask[3].nonzero()[0], (~layer.mask[3]).nonzero()[0]
        layer.mask[3][tuple(kept)], layer.mask[3][tuple(pruned)] = False, True
        layer.mask_version += 1
    x = torch.randn(2, 4, 8, 8)
    before = backend.stats.uploaded_bytes
    y = model(x)
    torch.testing.assert_close(y, _dense_forward(model, x), rtol=1e-4, atol=1e-4)
    assert 0 < backend.stats.index_uploads - after_one < len(family_for("irregular").gpu_index_buffers(backend._fmt))
    assert backend.stats.uploaded_bytes - before < 2 * (x.numel() * 4 + layer.weight.numel() * 4)


def _dense_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    backends = [m.backend for m in _sparse(model)]
    for m in _sparse(model):
        m.backend = None
    try:
        return model(x)
    finally:
        for m, b in zip(_sparse(model), backends, strict=True):
            m.backend = b


def test_sparse_conv2d_on_an_opencl_target_is_differentiable(opencl_context: Context) -> None:
    from mest_compile import sparse_conv2d
    from mest_compile.compiler.formats.block import random_block_mask

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 7, 7, generator=gen, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, generator=gen, requires_grad=True)
    mask = random_block_mask(8, (6, 3, 3), 0.5, gen)
    y = sparse_conv2d(x, w, mask, scheme="block", stride=2, padding=1, target="adreno")
    dx, dw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    ref = F.conv2d(x, w * mask, stride=2, padding=1)
    rdx, rdw = torch.autograd.grad(ref, (x, w), torch.ones_like(ref))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx, rdx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dw, rdw, rtol=1e-4, atol=1e-4)
    assert torch.all(dw[~mask] == 0)


@pytest.mark.parametrize("scheme", ("irregular", "block"))
def test_a_gradient_mask_narrows_the_opencl_weight_gradient(opencl_context: Context, scheme: str) -> None:
    # SparCL's gradient masking on a device: the wgrad kernel runs on the packed gradient mask's
    # units only (zero gradient on the mask's others, which masked dense does compute).
    model, reference = _model(scheme, 0), _model(scheme, 0)
    layer, ref = _sparse(model)[1], _sparse(reference)[1]
    family = family_for(scheme)
    layer.backend = backend = OpenCLConvBackend(family, "mali", opencl_context)
    gen = torch.Generator().manual_seed(3)
    ids = family.unit_ids(tuple(layer.weight.shape))
    grad_mask = (torch.rand(int(ids.max()) + 1, generator=gen) < 0.4)[ids] & layer.mask
    layer.weight_grad_mask = grad_mask
    x = torch.randn(4, 4, 8, 8, generator=gen)
    for net in (model, reference):
        net(x).square().sum().backward()
    assert torch.allclose(layer.weight.grad, ref.weight.grad * grad_mask, atol=1e-5)
    off = layer.mask & ~grad_mask
    assert bool((layer.weight.grad[off] == 0).all()) and bool((ref.weight.grad[off] != 0).any())
    assert (backend.stats.grad_packs, backend.stats.narrowed_calls) == (1, 1)
