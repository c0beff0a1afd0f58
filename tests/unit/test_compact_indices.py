"""Compact index storage (`compiler/formats/compact.py`): the dtype choice and the biased int16 round trip."""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.compact import bias, decode, encode, index_dtype, store_


def test_indices_below_2_16_are_int16_and_larger_ones_int32() -> None:
    assert index_dtype(1) == index_dtype(1 << 16) == torch.int16
    assert index_dtype((1 << 16) + 1) == torch.int32
    assert bias(torch.int16) == 1 << 15 and bias(torch.int32) == 0


def test_every_index_in_range_round_trips() -> None:
    values = torch.arange(1 << 16)
    stored = encode(values, torch.int16)
    assert stored.dtype == torch.int16 and torch.equal(decode(stored), values)
    wide = torch.tensor([0, 70000, 2**31 - 1])
    assert torch.equal(decode(encode(wide, torch.int32)), wide)


def test_store_pads_with_index_zero() -> None:
    buffer = torch.full((6,), 7, dtype=torch.int16)
    store_(buffer, torch.tensor([65535, 3, 0]))
    assert decode(buffer).tolist() == [65535, 3, 0, 0, 0, 0]
