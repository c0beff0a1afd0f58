"""`sparse_conv2d` packs each mask once: the same mask in later calls reuses its packed format."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mest_compile.compiler.api import sparse_conv2d
from mest_compile.compiler.formats.block import random_block_mask
from mest_compile.compiler.runtime.pack_cache import PACKED

import pytest

pytestmark = pytest.mark.compile


def test_a_mask_is_packed_once_and_repacked_when_it_changes() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    weight = torch.randn(16, 16, 3, 3, generator=generator, requires_grad=True)
    mask = random_block_mask(16, (16, 3, 3), 0.3, generator)
    PACKED.clear()
    before = (PACKED.stats.packs, PACKED.stats.hits)

    def call(m: torch.Tensor) -> None:
        y = sparse_conv2d(x, weight, m, scheme="block", padding=1)
        assert torch.allclose(y, F.conv2d(x, weight * m, padding=1), atol=1e-4)

    for _ in range(3):
        call(mask)
    call(mask.clone())  # equal content in another tensor: no new packing
    assert (PACKED.stats.packs - before[0], PACKED.stats.hits - before[1]) == (1, 3)
    mask[4:8] = ~mask[4:8]  # an in-place edit (blocks of 4 filters stay whole)
    call(mask)
    assert PACKED.stats.packs - before[0] == 2
    y = sparse_conv2d(x, weight, mask, scheme="block", padding=1)
    y.sum().backward()  # the reused format serves the gradients too
    assert torch.allclose(weight.grad, torch.autograd.grad(F.conv2d(x, weight * mask, padding=1).sum(), weight)[0]
                          * mask, atol=1e-4)
