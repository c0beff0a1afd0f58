"""Block-scheme input gradient in scatter form (stride 1): `dx = conv2d_input(dy, weight * mask)`.

The gather form (`block_dgrad.py`) sums, per dx row, the 4 `dy` rows of every block that feeds
it: each loaded `dy` vector feeds one FMA. Here the loop runs the other way. Per image and
channel chunk, for each `dy` row of each filter group, the group's 4 `dy` vectors are loaded
once into registers and added, with each kept block's 4 values, into the dx rows that block
feeds: `S[c, oh + kh, ow + kw] += sum_r v_r * dy[4g + r, oh, ow]`. Every kept block of the group
reuses the same 4 vectors (at 90% sparsity 30-60 blocks per group and chunk), so a block costs
one read-modify-write of a scratch row per 4 FMAs.

The scratch `S` is the chunk's dx planes zero-padded by the kernel's reach
(`ConvGeometry.dx_pad_*`): `S[c, r, col]` is `dx[c, r - p, col - p]`, so no write needs a bounds
test. It is zeroed, accumulated and copied out per (image, chunk) and stays in L2 (at most
`block_host.SCATTER_BYTES` per chunk). Within a group the blocks are ordered by tap, then
channel (see `BlockFormat`), so consecutive read-modify-writes touch different channels' rows:
ordered by channel first, neighbouring taps overlap a just-stored row at an offset of one float,
which stalls store forwarding (measured 1.2-1.5x slower).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.block import block_index_dtype
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.indices import index_reader


def block_dgrad_scatter(geo: ConvGeometry, rows: int, channels: int) -> tirx.PrimFunc:
    """TIR of the input-gradient kernel `f(dy, values, dx_ptr, dx_blk, dx_off, dx)`, stride 1.

    Args:
        geo: the layer (stride 1; batch and nnz symbolic).
        rows: `dy` rows per step (their 4 x `rows` vectors stay in registers); must divide `out_h`.
        channels: dx channels per chunk; the format must be packed with the same value.

    Buffers: `dy (N, O, OH, OW)`, `values (nnz, 4)` (forward order), `dx_ptr (K*G + 1,)` a CSR over
    (channel chunk, filter group), and per entry `dx_blk` (its row of `values`) and `dx_off` (its
    scratch offset `c_in_chunk * plane + kh * pitch + kw`); `dx (N, C, H, W)` (written).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, p = geo.out_h, geo.out_w, geo.padding
    if geo.stride != 1:
        raise ValueError(f"scatter input gradient is for stride 1, got {geo.stride}")
    assert OH % rows == 0, (OH, rows)
    G = O // 4
    K = -(-C // channels)
    SP, PLANE = geo.dx_pad_pitch, geo.dx_pad_plane
    SIZE = channels * PLANE
    LANES = 16
    IDX, ix = index_reader(block_index_dtype(geo))  # the format's compact per-block indices

    @T.prim_func(s_tir=True)
    def block_dgrad(dy: T.handle, v: T.handle, tp: T.handle, tb: T.handle, to: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "block_dgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        TP = T.match_buffer(tp, (K * G + 1,), "int32")
        TB = T.match_buffer(tb, (cap,), IDX)
        TO = T.match_buffer(to, (cap,), IDX)
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, k in T.grid(N, K):
            with T.sblock("dgrad"):
                vn, vk = T.axis.remap("SS", [n, k])
                T.reads(DY[vn, 0:O, 0:OH, 0:OW], V[0:nnz, 0:4], TP[0 : K * G + 1], TB[0:cap], TO[0:cap])
                T.writes(DX[vn, 0:C, 0:H, 0:W])
                S = T.sblock_alloc_buffer((SIZE,), "float32")
                d = T.sblock_alloc_buffer((rows, 4, OW), "float32", scope="local")
                for z0 in range(SIZE // LANES):
                    for z in T.vectorized(LANES):
                        S[z0 * LANES + z] = T.float32(0)
                for z in range(SIZE % LANES):
                    S[SIZE - SIZE % LANES + z] = T.float32(0)
                for ot, g in T.grid(OH // rows, G):
                    for i in T.unroll(rows):
                        for r in T.unroll(4):
                            for w in T.vectorized(OW):
                                d[i, r, w] = DY[vn, 4 * g + r, ot * rows + i, w]
                    for e in range(TP[vk * G + g], TP[vk * G + g + 1]):
                        for i in T.unroll(rows):
                            for w in T.vectorized(OW):
                                S[ix(TO[e]) + (ot * rows + i) * SP + w] = (
                                    S[ix(TO[e]) + (ot * rows + i) * SP + w]
                                    + V[ix(TB[e]), 0] * d[i, 0, w]
                                    + V[ix(TB[e]), 1] * d[i, 1, w]
                                    + V[ix(TB[e]), 2] * d[i, 2, w]
                                    + V[ix(TB[e]), 3] * d[i, 3, w]
                                )
                for cl, ih in T.grid(channels, H):
                    if vk * channels + cl < C:
                        for w in T.vectorized(W):
                            DX[vn, vk * channels + cl, ih, w] = S[cl * PLANE + (ih + p) * SP + p + w]

    return block_dgrad
