"""Compact index buffers: 16-bit storage for per-unit indices that stay below 2**16.

Per kept unit a format stores a few int32 indices (scratch offsets, value rows) beside a handful
of float32 values; at 90% sparsity those indices are a fifth of what training holds for a sparse
layer. Most layers' indices stay below 2**16, so they are stored as int16 biased by -2**15 (torch
has no usable uint16) and the kernels read `int32(index) + 2**15`: one sign extension whose
constant folds into the address, the same loads. Larger layers keep int32.

A format and its compiled kernels must agree on the dtype, so both derive it from the geometry
alone (an exclusive bound on every index value), never from a mask. The block format stores its
scratch offsets this way. The pattern format needs no bias: it stores channel and filter numbers,
bounded by `O * C`, and its kernels scale them (`formats/pattern.py` `index_dtype`).
"""

from __future__ import annotations

import torch

#: Added back to a stored int16 index (values `[0, 2**16)` are stored as `[-2**15, 2**15)`).
BIAS = 1 << 15


def index_dtype(bound: int) -> torch.dtype:
    """The storage dtype of indices in `[0, bound)`: int16 (biased) when they fit, else int32."""
    return torch.int16 if bound <= 1 << 16 else torch.int32


def bias(dtype: torch.dtype) -> int:
    """What a kernel adds to a stored index after widening it to int32."""
    return BIAS if dtype == torch.int16 else 0


def encode(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`values` (any integer dtype, in range) as stored in a buffer of `dtype`."""
    return (values.to(torch.int32) - bias(dtype)).to(dtype)


def store_(buffer: torch.Tensor, values: torch.Tensor) -> None:
    """Write `values` (encoded) at the start of `buffer`, and index 0 after them: stale entries stay
    valid indices, so a kernel that reads past the kept units is safe."""
    n = values.numel()
    buffer[n:].fill_(-bias(buffer.dtype))
    buffer[:n] = encode(values, buffer.dtype)


def decode(stored: torch.Tensor) -> torch.Tensor:
    """The int64 index values of a stored buffer (for tests and host-side readers)."""
    return stored.to(torch.int64) + bias(stored.dtype)


def tir_dtype(dtype: torch.dtype) -> str:
    """The TIR buffer dtype of a stored index buffer."""
    return str(dtype).removeprefix("torch.")
