"""Every family's three GPU kernels on a CUDA GPU, from PyTorch CUDA tensors, against masked dense.

The kernels run through `CudaConvBackend` (TVM's CUDA runtime on the tensors themselves, through
DLPack) and `sparse_conv2d` on CUDA tensors; the backend's gate has already compared them with
masked dense on the device, and the tests compare again on their own data. Launch counts prove the
kernels ran.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

SCHEMES = ("block", "pattern+filter_balance", "channel", "irregular")


@pytest.fixture(scope="module", autouse=True)
def torch_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA (the CPU build): install a CUDA build of torch to run this tier")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_sparse_conv2d_on_cuda_tensors_matches_masked_dense(cuda_target: Any, scheme: str, stride: int) -> None:
    from mest_compile import sparse_conv2d
    from mest_compile.compiler.families import family_for
    from mest_compile.compiler.runtime.device_backends import shared_device_backend

    family = family_for(scheme)
    gen = torch.Generator().manual_seed(stride)
    x = torch.randn(4, 16, 9, 9, generator=gen).cuda().requires_grad_(True)
    w = torch.randn(32, 16, 3, 3, generator=gen).cuda().requires_grad_(True)
    mask = family.random_mask(tuple(w.shape), gen).cuda()
    y = sparse_conv2d(x, w, mask, scheme=scheme, stride=stride, padding=1, target=cuda_target)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    ref = F.conv2d(x, w * mask, stride=stride, padding=1)
    rdx, rdw = torch.autograd.grad(ref, (x, w), dy)
    for got, want in ((y, ref), (dx, rdx), (dw, rdw)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.all(dw[~mask] == 0)
    assert shared_device_backend(family, cuda_target).stats.launches >= 3 + 3  # gate, then this call


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compiled_training_steps_on_the_gpu_follow_masked_dense(cuda_target: Any, scheme: str) -> None:
    from mest_compile import compile_model
    from mest_compile.sparsity.module import SparseConv2d

    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            SparseConv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1), scheme, sparsity=0.7), nn.ReLU(),
            SparseConv2d.from_dense(nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), scheme, sparsity=0.8),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
        ).cuda()

    compiled, reference = model(0), model(0)
    example = torch.randn(4, 8, 12, 12, device="cuda")
    report = compile_model(compiled, cuda_target, example_input=example)
    assert {entry["status"] for entry in report.values()} == {"compiled"}, report
    losses = {}
    for name, net in (("compiled", compiled), ("reference", reference)):
        gen = torch.Generator().manual_seed(1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses[name] = []
        for _ in range(3):
            x, y = torch.randn(4, 8, 12, 12, generator=gen).cuda(), torch.randint(0, 5, (4,), generator=gen).cuda()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert max(abs(a - b) for a, b in zip(losses["compiled"], losses["reference"], strict=True)) < 1e-4, losses
    for layer in (m for m in compiled if isinstance(m, SparseConv2d)):
        assert layer.backend.stats.launches > 3 and layer.backend.stats.uploaded_bytes < layer.weight.numel() * 4 * 4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_gradient_mask_narrows_the_cuda_weight_gradient(cuda_target: Any, scheme: str) -> None:
    from mest_compile.compiler.families import family_for
    from mest_compile.compiler.runtime.cuda_backend import CudaConvBackend
    from mest_compile.sparsity.module import SparseConv2d

    family = family_for(scheme)
    torch.manual_seed(0)
    layer = SparseConv2d.from_dense(nn.Conv2d(16, 32, 3, padding=1, bias=False), scheme, sparsity=0.7).cuda()
    gen = torch.Generator().manual_seed(3)
    ids = family.unit_ids(tuple(layer.weight.shape))
    grad_mask = (torch.rand(int(ids.max()) + 1, generator=gen) < 0.4)[ids].cuda() & layer.mask
    x = torch.randn(4, 16, 9, 9, generator=gen).cuda()
    want = torch.autograd.grad(F.conv2d(x, layer.weight * layer.mask, padding=1).square().sum(), layer.weight)[0]
    layer.backend = backend = CudaConvBackend(family, cuda_target)
    layer.weight_grad_mask = grad_mask
    layer(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, want * grad_mask, rtol=1e-4, atol=1e-4)
    assert bool((layer.weight.grad[layer.mask & ~grad_mask] == 0).all())
    assert (backend.stats.grad_packs, backend.stats.narrowed_calls) == (1, 1)
