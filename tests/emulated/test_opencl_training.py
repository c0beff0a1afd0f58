"""A few training steps with the block scheme's OpenCL kernels (forward and both gradients) on PoCL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.devices.opencl import Context
from mest_compile.compiler.runtime.opencl_backend import OpenCLConvBackend
from mest_compile.compiler.families import family_for
from mest_compile.compiler.runtime.gate import PHASES, reference
from mest_compile.sparsity.module import SparseConv2d


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        SparseConv2d.from_dense(nn.Conv2d(4, 8, 3, padding=1), "block", sparsity=0.5), nn.ReLU(),
        SparseConv2d.from_dense(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), "block", sparsity=0.6), nn.ReLU(),
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


def test_training_steps_with_opencl_kernels_follow_masked_dense(opencl_context: Context) -> None:
    device, reference = _model(0), _model(0)
    family = family_for("block")
    layers = [m for m in device if isinstance(m, SparseConv2d)]
    for layer in layers:
        layer.backend = OpenCLConvBackend(family, "mali", opencl_context)
    got, want = _train(device, 4), _train(reference, 4)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4, (got, want)
    for layer, ref in zip(layers, [m for m in reference if isinstance(m, SparseConv2d)], strict=True):
        assert torch.allclose(layer.weight, ref.weight, atol=1e-5)
        assert torch.all(layer.weight.grad[~layer.mask] == 0)  # the gradient is restricted to the mask


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (3, 1, 0)])
def test_gpu_gradients_match_pytorch(opencl_context: Context, kernel: int, stride: int, padding: int) -> None:
    from mest_compile.compiler.formats.block import random_block_mask
    from mest_compile.compiler.formats.geometry import ConvGeometry

    geo = ConvGeometry(6, 7, 7, 8, kernel, kernel, stride=stride, padding=padding)
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    x, w = torch.randn(2, 6, 7, 7, generator=gen), torch.randn(8, 6, kernel, kernel, generator=gen)
    mask = random_block_mask(8, (6, kernel, kernel), 0.5, gen)
    dy = torch.randn(2, 8, geo.out_h, geo.out_w, generator=gen)
    family = family_for("block")
    backend = OpenCLConvBackend(family, "adreno", opencl_context)
    fmt = family.forward_format(geo, mask)
    values = fmt.values(w)
    want = {which: reference(which, x, w, mask, dy, stride, padding) for which in PHASES}
    want["wgrad"] = fmt.values(want["wgrad"])  # the kernel writes the kept values only, packed
    for which in PHASES:  # the forward ignores `dy`
        torch.testing.assert_close(backend.run(which, x, values, dy, fmt), want[which], rtol=1e-4, atol=1e-4)
