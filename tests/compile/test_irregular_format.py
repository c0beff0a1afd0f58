"""Packing of unstructured masks: buffers, capacity, repacking, signature (torch only, no TVM)."""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.irregular import IrregularFormat
from mest_compile.compiler.formats.values import on_device
from mest_compile.errors import MestError

GEO = ConvGeometry(6, 7, 9, 10, 3, 3, stride=2, padding=1)


def _mask(seed: int, density: float = 0.3) -> torch.Tensor:
    return torch.rand(10, 6, 3, 3, generator=torch.Generator().manual_seed(seed)) < density


def test_values_are_the_kept_weights_in_filter_order():
    mask = _mask(0)
    w = torch.randn(10, 6, 3, 3)
    fmt = IrregularFormat.pack(mask, GEO)
    kept = mask.reshape(10, -1)
    assert fmt.nnz == int(kept.sum())
    assert torch.equal(fmt.row_ptr[1:] - fmt.row_ptr[:-1], kept.sum(1).to(torch.int32))
    o, col = kept.nonzero(as_tuple=True)
    assert torch.equal(fmt.values(w), w.reshape(10, -1)[o, col])
    assert torch.equal(fmt.x_off[: fmt.nnz], GEO.x_offsets[col])


@pytest.mark.parametrize("chunk", [0, 3, 4])
def test_input_gradient_lists_every_nonzero_once(chunk):
    fmt = IrregularFormat.pack(_mask(1), GEO, chunk_filters=chunk)
    chunks = -(-10 // fmt.chunk_filters)
    assert fmt.dx_ptr.numel() == chunks * 6 * 4 + 1
    assert int(fmt.dx_ptr[-1]) == fmt.nnz
    assert sorted(fmt.dx_val[: fmt.nnz].tolist()) == list(range(fmt.nnz))
    assert bool((fmt.dx_ptr[1:] >= fmt.dx_ptr[:-1]).all())


def test_repack_in_place_and_capacity():
    fmt = IrregularFormat.pack(_mask(2, 0.2), GEO, capacity=200)
    buffers = {name: t.data_ptr() for name, t in fmt.buffers().items()}
    dense = torch.ones(10, 6, 3, 3, dtype=torch.bool)
    assert not fmt.fits(dense)  # 540 weights > 200
    with pytest.raises(MestError, match="capacity"):
        fmt.repack_(dense)
    new = _mask(3, 0.25)
    assert fmt.fits(new)
    fmt.repack_(new)
    assert {name: t.data_ptr() for name, t in fmt.buffers().items()} == buffers
    fresh = IrregularFormat.pack(new, GEO, capacity=200)
    for name, t in fmt.buffers().items():
        assert torch.equal(t, fresh.buffers()[name]), name
    assert fmt.nbytes() == fresh.nbytes()


def test_empty_and_full_masks():
    empty = IrregularFormat.pack(torch.zeros(10, 6, 3, 3, dtype=torch.bool), GEO)
    assert empty.nnz == 0 and empty.capacity == 1 and int(empty.row_ptr[-1]) == 0
    assert empty.values(torch.randn(10, 6, 3, 3)).shape == (0,)
    full = IrregularFormat.pack(torch.ones(10, 6, 3, 3, dtype=torch.bool), GEO)
    assert full.nnz == 540


def test_signature_tracks_work_per_filter():
    a = IrregularFormat.pack(_mask(4, 0.1), GEO, capacity=600)
    b = IrregularFormat.pack(_mask(5, 0.1), GEO, capacity=600)
    c = IrregularFormat.pack(_mask(6, 0.9), GEO, capacity=600)
    assert a.signature()[:3] == c.signature()[:3]
    assert sum(a.signature()[-1]) == 10
    assert a.signature()[-1] != c.signature()[-1]
    assert a.signature()[-1] == b.signature()[-1] or sum(abs(x - y) for x, y in zip(a.signature()[-1], b.signature()[-1])) <= 4


def test_wrong_shape_is_rejected():
    with pytest.raises(MestError, match="does not match"):
        IrregularFormat.pack(torch.ones(10, 6, 1, 1, dtype=torch.bool), GEO)


@pytest.mark.parametrize("block", [1, 2, 4, 6])
def test_channel_block_segments_cut_each_filter_row(block):
    mask = _mask(7, 0.4)
    fmt = IrregularFormat.pack(mask, GEO, channel_block=block)
    blocks = -(-6 // fmt.channel_block)
    seg = fmt.seg_ptr.reshape(10, blocks + 1)
    assert torch.equal(seg[:, 0], fmt.row_ptr[:-1]) and torch.equal(seg[:, -1], fmt.row_ptr[1:])
    per_channel = mask.reshape(10, 6, 9).sum(2)
    for b in range(blocks):
        expect = per_channel[:, b * fmt.channel_block : (b + 1) * fmt.channel_block].sum(1)
        assert torch.equal((seg[:, b + 1] - seg[:, b]).to(torch.int64), expect)


def test_indices_move_to_another_device_once_per_refill():
    # A CUDA weight gathers through a device copy of the CPU indices ("meta" stands in for it here).
    fmt = IrregularFormat.pack(_mask(7), GEO, capacity=200)
    meta = torch.device("meta")
    first = on_device(fmt.flat_idx, meta)
    assert first.device == meta and on_device(fmt.flat_idx, meta) is first
    assert on_device(fmt.flat_idx, torch.device("cpu")) is fmt.flat_idx
    values = fmt.values(torch.empty(10, 6, 3, 3, device=meta))
    assert values.device == meta and values.shape == (fmt.nnz,)
    fmt.repack_(_mask(8))  # refilled in place: the copy is stale
    assert on_device(fmt.flat_idx, meta) is not first
