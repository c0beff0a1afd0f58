"""Packing of the block scheme: buffers, capacity, repacking, signature (torch only, no TVM)."""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.formats import BlockFormat, ConvGeometry
from mest_compile.compiler.families.block import random_block_mask
from mest_compile.errors import MestError

GEO = ConvGeometry(6, 7, 9, 12, 3, 3, stride=2, padding=1)


def _mask(seed: int, density: float = 0.4) -> torch.Tensor:
    return random_block_mask(12, (6, 3, 3), density, torch.Generator().manual_seed(seed))


def test_values_are_the_kept_weights_in_group_order():
    mask = _mask(0)
    w = torch.randn(12, 6, 3, 3)
    fmt = BlockFormat.pack(mask, GEO)
    kept = mask.reshape(3, 4, -1)[:, 0]
    assert fmt.nnz == int(kept.sum())
    assert torch.equal(fmt.group_ptr[1:] - fmt.group_ptr[:-1], kept.sum(1).to(torch.int32))
    g, col = kept.nonzero(as_tuple=True)
    expect = w.reshape(3, 4, -1)[g, :, col]
    assert torch.equal(fmt.values(w), expect)
    assert torch.equal(fmt.x_off[: fmt.nnz], GEO.x_offsets[col])


def test_input_gradient_lists_every_block_once():
    fmt = BlockFormat.pack(_mask(1), GEO)
    assert int(fmt.dx_ptr[-1]) == fmt.nnz
    assert sorted(fmt.dx_blk[: fmt.nnz].tolist()) == list(range(fmt.nnz))
    assert bool((fmt.dx_ptr[1:] >= fmt.dx_ptr[:-1]).all())


def test_partial_block_is_rejected():
    mask = _mask(2)
    mask[1, 0, 0, 0] = ~mask[1, 0, 0, 0]
    with pytest.raises(MestError, match="all-or-none"):
        BlockFormat.pack(mask, GEO)


def test_filters_not_a_multiple_of_four_are_rejected():
    with pytest.raises(MestError, match="% 4"):
        BlockFormat.pack(torch.ones(6, 6, 3, 3, dtype=torch.bool), GEO)


def test_repack_within_capacity_keeps_the_buffers():
    fmt = BlockFormat.pack(_mask(3, 0.3), GEO, capacity=80)
    ptrs = [t.data_ptr() for t in fmt.buffers().values()]
    new = _mask(4, 0.3)
    assert fmt.fits(new)
    fmt.repack_(new)
    assert [t.data_ptr() for t in fmt.buffers().values()] == ptrs
    fresh = BlockFormat.pack(new, GEO, capacity=80)
    for name, t in fresh.buffers().items():
        assert torch.equal(t, fmt.buffers()[name]), name


def test_overflowing_the_capacity_is_an_error():
    fmt = BlockFormat.pack(_mask(5, 0.1), GEO)
    dense = torch.ones(12, 6, 3, 3, dtype=torch.bool)
    assert not fmt.fits(dense)
    with pytest.raises(MestError, match="capacity"):
        fmt.repack_(dense)


def test_empty_mask_packs():
    fmt = BlockFormat.pack(torch.zeros(12, 6, 3, 3, dtype=torch.bool), GEO)
    assert fmt.nnz == 0 and fmt.capacity == 1
    assert fmt.values(torch.randn(12, 6, 3, 3)).shape == (0, 4)


def test_signature_tracks_structure():
    a = BlockFormat.pack(_mask(6, 0.2), GEO, capacity=162)
    b = BlockFormat.pack(torch.ones(12, 6, 3, 3, dtype=torch.bool), GEO, capacity=162)
    assert a.signature() != b.signature()
    assert a.signature() == BlockFormat.pack(_mask(6, 0.2), GEO, capacity=162).signature()
