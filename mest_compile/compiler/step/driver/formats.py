"""The kernels' packed formats in numpy: a mask in, the index buffers the compiled step reads out.

The same layouts as `mest_compile.compiler.formats` (whose docstrings describe them), written with
numpy so a board without PyTorch can repack after a mutation; `tests/compile/test_step_bundle.py`
checks every buffer against those formats. The geometry-dependent tables (each weight column's
input-scratch offset, dx phase and gradient-scratch offset) and the kernels' tile choices come
with the bundle (`layout`), computed by the host that compiled the kernels.

Every packer returns `Packed`: the buffers by name, the unit count and `flat_idx`, which weight
entries (`weight.ravel()` indices, one row per unit) each row of `values` holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Layout = Mapping[str, Any]

#: MEST's 8 patterns of a 3x3 kernel, in its order (pattern id = row + 1), as kept tap indices kh*3+kw.
PATTERN_TAPS = np.array([[4, 5, 7, 8], [3, 4, 6, 7], [1, 2, 4, 5], [0, 1, 3, 4],
                         [5, 6, 7, 8], [3, 4, 5, 7], [1, 4, 5, 7], [1, 3, 4, 7]], dtype=np.int64)
BLOCK_ROWS = 4


@dataclass
class Packed:
    """One layer's packed structure: `nnz` units, the kernels' buffers, the values' weight indices."""

    nnz: int
    buffers: dict[str, np.ndarray]
    flat_idx: np.ndarray  # (capacity, unit) int64


class FormatError(ValueError):
    """A mask that the layer's format cannot hold (illegal structure or over capacity)."""


def _counts(keys: np.ndarray, size: int) -> np.ndarray:
    """`(size + 1,)` int32 CSR pointer of the (sorted or not) integer `keys`."""
    ptr = np.zeros(size + 1, dtype=np.int32)
    ptr[1:] = np.cumsum(np.bincount(keys, minlength=size))
    return ptr


def _padded(values: np.ndarray, capacity: int, dtype: Any = np.int32) -> np.ndarray:
    out = np.zeros((capacity, *values.shape[1:]), dtype=dtype)
    out[: len(values)] = values
    return out


def _index_dtype(layout: Layout) -> np.dtype:
    """The dtype of the layer's narrowed index buffers (int32 in bundles that do not say)."""
    return np.dtype(layout.get("index_dtype", "int32"))


def _compact(values: np.ndarray, capacity: int, layout: Layout) -> np.ndarray:
    """Per-unit indices as the kernels read them (`compiler/formats/compact.py`): int16 stored biased
    by -2**15 when the layout says so, index 0 in the entries past the kept units."""
    dtype = _index_dtype(layout)
    bias = 1 << 15 if dtype == np.int16 else 0
    out = np.full(capacity, -bias, dtype=dtype)
    out[: len(values)] = np.asarray(values, dtype=np.int64) - bias
    return out


def _check_capacity(nnz: int, capacity: int, unit: str) -> None:
    if nnz > capacity:
        raise FormatError(f"the mask keeps {nnz} {unit}s, more than the layer's capacity {capacity}")


def pack_irregular(mask: np.ndarray, layout: Layout, capacity: int) -> Packed:
    """CSR over filters (forward, weight gradient) and by dx row (input gradient)."""
    o_n, c_n = mask.shape[0], mask.shape[1]
    khw = int(np.prod(mask.shape[2:]))
    kept = mask.reshape(o_n, c_n * khw)
    o, col = np.nonzero(kept)
    nnz = len(o)
    _check_capacity(nnz, capacity, "weight")
    row_ptr = _counts(o, o_n)
    x_off, phase, off = (np.asarray(layout[k], dtype=np.int64) for k in ("x_offsets", "dx_phase", "dx_offsets"))
    chunk_filters, channel_block, stride = layout["chunk_filters"], layout["channel_block"], layout["stride"]
    blocks = -(-c_n // channel_block)
    per_block = np.zeros((o_n, blocks * channel_block), dtype=np.int64)
    per_block[:, :c_n] = kept.reshape(o_n, c_n, khw).sum(2)
    per_block = per_block.reshape(o_n, blocks, channel_block).sum(2)
    starts = np.cumsum(np.pad(per_block, ((0, 0), (1, 0))), 1) + row_ptr[:-1, None]
    chunks = -(-o_n // chunk_filters)
    dx_row = ((o // chunk_filters) * c_n + col // khw) * stride**2 + phase[col]
    order = np.argsort(dx_row, kind="stable")
    buffers = {
        "row_ptr": row_ptr,
        "seg_ptr": starts.reshape(-1).astype(np.int32),
        "x_off": _padded(x_off[col], capacity),
        "dx_ptr": _counts(dx_row, chunks * c_n * stride**2),
        "dx_val": _padded(order, capacity),
        "dx_off": _padded(o[order] * layout["dy_plane"] + off[col[order]], capacity),
    }
    return Packed(nnz, buffers, _padded(o * kept.shape[1] + col, capacity, np.int64)[:, None])


def pack_block(mask: np.ndarray, layout: Layout, capacity: int) -> Packed:
    """Blocks of 4 filters at one column: CSR over filter groups, and an input-gradient layout."""
    o_n, c_n = mask.shape[0], mask.shape[1]
    kh_n, kw_n = mask.shape[2], mask.shape[3]
    khw = kh_n * kw_n
    blocks = mask.reshape(o_n // BLOCK_ROWS, BLOCK_ROWS, c_n * khw)
    kept = blocks[:, 0, :]
    if not (blocks == kept[:, None, :]).all():
        raise FormatError("the mask is not all-or-none over blocks of 4 consecutive filters at one column")
    g, col = np.nonzero(kept)
    nnz = len(g)
    _check_capacity(nnz, capacity, "block")
    groups, columns = kept.shape
    x_off, phase, off = (np.asarray(layout[k], dtype=np.int64) for k in ("x_offsets", "dx_phase", "dx_offsets"))
    flat_idx = (g[:, None] * BLOCK_ROWS + np.arange(BLOCK_ROWS)) * columns + col[:, None]
    scatter, stride = layout["scatter_channels"], layout["stride"]
    if scatter > 0:
        c, kh, kw = col // khw, col % khw // kw_n, col % kw_n
        bucket = (c // scatter) * groups + g
        key = (bucket * khw + kw * kh_n + kh) * c_n + c
        order = np.argsort(key, kind="stable")
        dx_ptr = _counts(bucket, -(-c_n // scatter) * groups)
        dx_off = ((c % scatter) * layout["dx_pad_plane"] + kh * layout["dx_pad_pitch"] + kw)[order]
    else:
        chunk_groups = layout["chunk_groups"]
        dx_row = ((g // chunk_groups) * c_n + col // khw) * stride**2 + phase[col]
        order = np.argsort(dx_row, kind="stable")
        dx_ptr = _counts(dx_row, -(-groups // chunk_groups) * c_n * stride**2)
        dx_off = g[order] * BLOCK_ROWS * layout["dy_plane"] + off[col[order]]
    buffers = {"group_ptr": _counts(g, groups), "x_off": _compact(x_off[col], capacity, layout), "dx_ptr": dx_ptr,
               "dx_blk": _compact(order, capacity, layout), "dx_off": _compact(dx_off, capacity, layout)}
    return Packed(nnz, buffers, _padded(flat_idx, capacity, np.int64))


def kernel_patterns(mask: np.ndarray) -> np.ndarray:
    """(O, C) pattern id per 3x3 kernel: 1..8, 0 for an empty kernel, -1 for neither."""
    o_n, c_n = mask.shape[:2]
    flat = mask.reshape(o_n, c_n, 9)
    table = np.zeros((8, 9), dtype=bool)
    np.put_along_axis(table, PATTERN_TAPS, True, axis=1)
    match = (flat[:, :, None, :] == table[None, None]).all(-1)
    ids = np.where(match.any(-1), match.argmax(-1) + 1, -1)
    return np.where(flat.any(-1), ids, 0)


def pack_pattern(mask: np.ndarray, layout: Layout, capacity: int) -> Packed:
    """Kept 3x3 kernels grouped by pattern: by (filter, pattern, channel) and by (channel, pattern, filter)."""
    ids = kernel_patterns(mask)
    if (ids < 0).any():
        raise FormatError("the mask has a 3x3 kernel that is neither empty nor one of MEST's 8 patterns")
    n_out, n_in = ids.shape
    o, c = np.nonzero(ids > 0)
    pat = ids[o, c] - 1
    key = o * 8 + pat
    order = np.argsort(key, kind="stable")
    o, c, pat, key = o[order], c[order], pat[order], key[order]
    nnz = len(o)
    _check_capacity(nnz, capacity, "kernel")
    tkey = c * 8 + pat
    torder = np.argsort(tkey, kind="stable")
    # Channels and filters (the kernels scale them), in the layer's index dtype (int16 when O*C fits).
    buffers = {"fwd_ptr": _counts(key, n_out * 8), "x_off": _padded(c, capacity), "dx_ptr": _counts(tkey, n_in * 8),
               "dx_ker": _padded(torder, capacity), "dx_off": _padded(o[torder], capacity)}
    buffers = {name: buffer.astype(_index_dtype(layout)) for name, buffer in buffers.items()}
    return Packed(nnz, buffers, _padded((o * n_in + c)[:, None] * 9 + PATTERN_TAPS[pat], capacity, np.int64))


def pack_channel(mask: np.ndarray, layout: Layout, capacity: int) -> Packed:
    """Whole kept filters: their indices (`kept`) and the inverse map (`slot`, -1 when pruned)."""
    rows = mask.reshape(mask.shape[0], -1)
    kept = rows.any(1)
    if not (rows.all(1) == kept).all():
        raise FormatError("the mask is not all-or-none over whole filters (channel scheme)")
    idx = np.nonzero(kept)[0]
    nnz = len(idx)
    _check_capacity(nnz, capacity, "filter")
    slot = np.full(mask.shape[0], -1, dtype=np.int32)
    slot[idx] = np.arange(nnz, dtype=np.int32)
    gather = _padded(idx, capacity, np.int64)
    return Packed(nnz, {"kept": gather.astype(np.int32), "slot": slot},
                  gather[:, None] * rows.shape[1] + np.arange(rows.shape[1]))


#: Packers by format kind (the host format's class, see `board.py`'s `_layout`).
PACKERS: dict[str, Callable[[np.ndarray, Layout, int], Packed]] = {
    "irregular": pack_irregular, "block": pack_block, "pattern": pack_pattern, "channel": pack_channel}
