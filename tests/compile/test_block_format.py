"""Packing of the block scheme: buffers, capacity, repacking, signature (torch only, no TVM)."""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.formats import BlockFormat, ConvGeometry
from mest_compile.compiler.formats.block import block_index_dtype, index_bound, random_block_mask
from mest_compile.compiler.formats.compact import decode
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
    assert torch.equal(decode(fmt.x_off[: fmt.nnz]), GEO.x_offsets[col].long())


def test_input_gradient_lists_every_block_once():
    fmt = BlockFormat.pack(_mask(1), GEO)
    assert int(fmt.dx_ptr[-1]) == fmt.nnz
    assert sorted(decode(fmt.dx_blk[: fmt.nnz]).tolist()) == list(range(fmt.nnz))
    assert bool((fmt.dx_ptr[1:] >= fmt.dx_ptr[:-1]).all())


def test_scatter_layout_lists_blocks_by_chunk_and_group_with_their_scratch_offsets():
    geo = ConvGeometry(6, 7, 9, 12, 3, 3, stride=1, padding=1)
    mask = _mask(3)
    fmt = BlockFormat.pack(mask, geo, scatter_channels=4)  # channels 0-3 and 4-5: 2 chunks
    kept = mask.reshape(3, 4, -1)[:, 0]
    g, col = kept.nonzero(as_tuple=True)
    c, kh, kw = col // 9, col % 9 // 3, col % 3
    assert fmt.dx_ptr.numel() == 2 * 3 + 1 and int(fmt.dx_ptr[-1]) == fmt.nnz
    blk = decode(fmt.dx_blk[: fmt.nnz])
    assert sorted(blk.tolist()) == list(range(fmt.nnz))  # every block once
    bucket = torch.div(c, 4, rounding_mode="floor") * 3 + g
    for b in range(6):  # each CSR bucket holds exactly its (chunk, group)'s blocks
        lo, hi = int(fmt.dx_ptr[b]), int(fmt.dx_ptr[b + 1])
        assert torch.equal(bucket[blk[lo:hi]], torch.full((hi - lo,), b))
    rows, pitch = geo.out_h + 2, geo.out_w + 2
    want = (c % 4) * rows * pitch + kh * pitch + kw
    assert torch.equal(decode(fmt.dx_off[: fmt.nnz]), want[blk])
    with pytest.raises(MestError, match="stride 1"):
        BlockFormat.pack(mask, GEO, scatter_channels=4)


def test_per_block_indices_are_int16_while_the_layer_allows_it():
    fmt = BlockFormat.pack(_mask(4), GEO)
    assert {fmt.x_off.dtype, fmt.dx_blk.dtype, fmt.dx_off.dtype} == {torch.int16}
    assert fmt.group_ptr.dtype == fmt.dx_ptr.dtype == torch.int32
    # Entries past the kept blocks hold index 0, a valid offset for a kernel that over-reads.
    padded = BlockFormat.pack(_mask(4), GEO, capacity=fmt.nnz + 5)
    assert decode(padded.x_off[fmt.nnz:]).eq(0).all() and decode(padded.dx_off[fmt.nnz:]).eq(0).all()
    # A 64-channel 64x64 input: its input scratch alone holds more than 2**16 floats.
    big = ConvGeometry(64, 64, 64, 8, 3, 3, stride=1, padding=1)
    assert index_bound(big) > 1 << 16 and block_index_dtype(big) == torch.int32
    mask = random_block_mask(8, (64, 3, 3), 0.3, torch.Generator().manual_seed(5))
    wide = BlockFormat.pack(mask, big)
    assert wide.x_off.dtype == torch.int32
    g, col = mask.reshape(2, 4, -1)[:, 0].nonzero(as_tuple=True)
    assert torch.equal(decode(wide.x_off[: wide.nnz]), big.x_offsets[col].long())


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
