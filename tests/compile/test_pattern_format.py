"""Packed pattern format: grouping by pattern, both orders, capacity and in-place repacking."""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.formats.pattern import random_pattern_mask
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import PATTERNS, PatternFormat, index_dtype, pattern_taps
from mest_compile.errors import MestError

GEO = ConvGeometry(6, 8, 8, 10, 3, 3, stride=1, padding=1)


def _mask(seed: int, density: float = 0.4) -> torch.Tensor:
    return random_pattern_mask((10, 6, 3, 3), density, torch.Generator().manual_seed(seed))


def test_taps_are_the_patterns_entries_in_row_major_order():
    for pattern, taps in zip(PATTERNS, pattern_taps()):
        assert len(taps) == 4
        assert sorted(taps) == list(taps)
        assert all(pattern[kh, kw] for kh, kw in taps)


def test_both_orders_list_every_kept_kernel_grouped_by_pattern():
    mask = _mask(0)
    fmt = PatternFormat.pack(mask, GEO, capacity=100)
    ids = torch.stack([(mask[o, c].flatten() != 0).any() for o in range(10) for c in range(6)]).sum()
    assert fmt.nnz == int(ids)
    values = fmt.values(torch.arange(10 * 6 * 9, dtype=torch.float32).reshape(10, 6, 3, 3))
    # Forward order: CSR over (filter, pattern), each kernel's 4 values are its pattern's entries.
    for o in range(10):
        for p in range(8):
            for j in range(int(fmt.fwd_ptr[o * 8 + p]), int(fmt.fwd_ptr[o * 8 + p + 1])):
                flat = values[j].long()
                assert bool((flat // 54 == o).all())
                c = int(flat[0] % 54 // 9)
                assert int(fmt.x_off[j]) == c
                assert bool(mask[o, c].flatten()[flat % 9].all()) and bool((mask[o, c] == PATTERNS[p]).all())
    # Input-gradient order: CSR over (channel, pattern), pointing at the same kernels.
    for c in range(6):
        for p in range(8):
            for e in range(int(fmt.dx_ptr[c * 8 + p]), int(fmt.dx_ptr[c * 8 + p + 1])):
                j = int(fmt.dx_ker[e])
                o = int(values[j, 0]) // 54
                assert int(values[j, 0]) % 54 // 9 == c
                assert int(fmt.dx_off[e]) == o
                assert bool((mask[o, c] == PATTERNS[p]).all())


def test_repack_in_place_and_capacity():
    fmt = PatternFormat.pack(_mask(1, 0.2), GEO, capacity=40)
    buffers = {k: v.data_ptr() for k, v in fmt.buffers().items()}
    new = _mask(2, 0.3)
    assert fmt.fits(new)
    fmt.repack_(new)
    assert {k: v.data_ptr() for k, v in fmt.buffers().items()} == buffers
    assert fmt.nnz == int(new.reshape(10, 6, 9).any(-1).sum())
    full = random_pattern_mask((10, 6, 3, 3), 1.0, torch.Generator().manual_seed(3))
    assert not fmt.fits(full)
    with pytest.raises(MestError, match="capacity"):
        fmt.repack_(full)


def test_rejects_non_pattern_masks_and_empty_layers_pack():
    bad = torch.zeros(10, 6, 3, 3, dtype=torch.bool)
    bad[0, 0, 1, 1] = True
    with pytest.raises(MestError, match="patterns"):
        PatternFormat.pack(bad, GEO)
    empty = PatternFormat.pack(torch.zeros(10, 6, 3, 3, dtype=torch.bool), GEO)
    assert empty.nnz == 0 and empty.capacity == 1
    assert empty.values(torch.randn(10, 6, 3, 3)).shape == (0, 4)


def test_signature_counts_patterns():
    fmt = PatternFormat.pack(_mask(4), GEO)
    assert int(fmt.pattern_counts().sum()) == fmt.nnz
    assert fmt.signature() == PatternFormat.pack(_mask(4), GEO).signature()
    assert fmt.nbytes() > 0


@pytest.mark.parametrize("o,c,dtype", [(10, 6, torch.int16), (128, 128, torch.int16), (181, 181, torch.int16),
                                       (182, 181, torch.int32), (256, 256, torch.int32)])
def test_index_buffers_narrow_to_int16_while_the_kernel_count_fits(o, c, dtype):
    """Every index is bounded by O * C (pointers, kernel rows, channels, filters): int16 up to 32767."""
    geo = ConvGeometry(c, 4, 4, o, 3, 3, stride=1, padding=1)
    assert index_dtype(geo) == str(dtype).removeprefix("torch.")
    fmt = PatternFormat.pack(random_pattern_mask((o, c, 3, 3), 1.0, torch.Generator().manual_seed(5)), geo)
    assert {t.dtype for t in fmt.buffers().values()} == {dtype}
    assert fmt.nnz == (o - 1) * c  # all but the first filter: the largest values the buffers hold
    assert int(fmt.fwd_ptr[-1]) == int(fmt.dx_ptr[-1]) == fmt.nnz
    assert int(fmt.x_off[: fmt.nnz].max()) == c - 1 and int(fmt.dx_off[: fmt.nnz].max()) == o - 1
    assert int(fmt.dx_ker[: fmt.nnz].max()) == fmt.nnz - 1
    width = dtype.itemsize
    assert fmt.nbytes() == width * (8 * (o + c) + 2 + 3 * fmt.capacity) + 16 * fmt.capacity
