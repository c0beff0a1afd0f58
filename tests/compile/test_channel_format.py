"""Packing of the channel scheme: buffers, capacity, repacking, signature (torch only, no TVM)."""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.formats.channel import ChannelFormat, kept_filters
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.errors import MestError
from mest_compile.sparsity.schemes import mask_for

GEO = ConvGeometry(6, 7, 9, 12, 3, 3, stride=2, padding=1)


def _mask(kept: list[int]) -> torch.Tensor:
    on = torch.zeros(12, dtype=torch.bool)
    on[kept] = True
    return on[:, None, None, None].expand(12, 6, 3, 3).clone()


def test_buffers_list_the_kept_filters_and_their_inverse():
    fmt = ChannelFormat.pack(_mask([1, 4, 11]), GEO, capacity=5)
    assert fmt.nnz == 3 and fmt.capacity == 5
    assert fmt.kept.tolist() == [1, 4, 11, 0, 0]
    assert fmt.slot.tolist() == [-1, 0, -1, -1, 1, -1, -1, -1, -1, -1, -1, 2]
    w = torch.randn(12, 6, 3, 3)
    assert torch.equal(fmt.values(w), w[[1, 4, 11]])


def test_values_gradient_is_zero_on_pruned_filters():
    fmt = ChannelFormat.pack(_mask([0, 7]), GEO)
    w = torch.randn(12, 6, 3, 3, requires_grad=True)
    fmt.values(w).sum().backward()
    assert torch.equal(w.grad.reshape(12, -1).any(1), torch.tensor([i in (0, 7) for i in range(12)]))


def test_repack_refills_in_place_and_overflow_is_refused():
    fmt = ChannelFormat.pack(_mask([2, 3]), GEO, capacity=3)
    kept, slot = fmt.kept, fmt.slot
    assert fmt.fits(_mask([5, 6, 9]))
    fmt.repack_(_mask([5, 6, 9]))
    assert fmt.kept is kept and fmt.slot is slot and fmt.nnz == 3
    assert fmt.kept.tolist() == [5, 6, 9]
    assert not fmt.fits(_mask([0, 1, 2, 3]))
    with pytest.raises(MestError, match="capacity"):
        fmt.repack_(_mask([0, 1, 2, 3]))


def test_fully_pruned_layer_packs_to_nothing():
    fmt = ChannelFormat.pack(_mask([]), GEO)
    assert fmt.nnz == 0 and fmt.capacity == 1
    assert fmt.values(torch.randn(12, 6, 3, 3)).shape == (0, 6, 3, 3)
    assert bool((fmt.slot == -1).all())


def test_partial_filter_is_rejected():
    mask = _mask([3])
    mask[3, 0, 0, 0] = False
    with pytest.raises(MestError, match="all-or-none"):
        ChannelFormat.pack(mask, GEO)


def test_signature_tracks_the_kept_count():
    a = ChannelFormat.pack(_mask([1, 2]), GEO, capacity=4)
    b = ChannelFormat.pack(_mask([5, 8]), GEO, capacity=4)
    c = ChannelFormat.pack(_mask([5, 8, 9]), GEO, capacity=4)
    assert a.signature() == b.signature() != c.signature()
    assert a.nbytes() == 4 * 4 + 12 * 4 + 4 * 6 * 9 * 4


def test_training_side_masks_are_legal_with_the_documented_counts():
    # MEST's ResNet-32 at 90%: floor(0.9 * O + 0.5) filters pruned.
    for out, kept in ((32, 3), (64, 6), (128, 13)):
        mask = mask_for(torch.randn(out, 4, 3, 3), "channel", 0.9)
        assert int(kept_filters(mask).sum()) == kept
