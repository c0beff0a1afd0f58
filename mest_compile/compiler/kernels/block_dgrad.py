"""Block-scheme input gradient: `dx = conv2d_input(dy, weight * mask)`.

Per (image, input channel `c`, dx row phase `a`, row tile) one complete block accumulates the
`s` column phases of `rows` dx rows: for each phase `b`, a data-dependent loop over the blocks
feeding row `(c, a, b)` adds 4 values times 4 contiguous rows of the zero-padded `dy` scratch.
The phases are interleaved back into dx rows by one constant shuffle per row, so stride 2 costs
no wasted multiplications (no zero insertion) and no scattered stores.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import make_fill


def interleave_map(width: int, stride: int, phase_w: int) -> list[int]:
    """Lane of the concatenated phase vectors that dx column `iw` comes from."""
    return [(iw % stride) * phase_w + iw // stride for iw in range(width)]


def block_dgrad(geo: ConvGeometry, rows: int) -> tirx.PrimFunc:
    """TIR of the input-gradient kernel `f(dy, values, dx_ptr, dx_blk, dx_off, dx)`.

    Args:
        geo: the layer (batch and nnz symbolic).
        rows: dx rows (per phase) per register tile; must divide `geo.dx_rows`.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s = geo.out_h, geo.out_w, geo.stride
    QR, QC = geo.dx_rows, geo.dx_cols
    DR, DP, PLANE, DS = geo.dy_rows, geo.dy_pitch, geo.dy_plane, geo.dy_size
    assert QR % rows == 0, (QR, rows)
    TILES = QR // rows
    fill = make_fill(O, OH, OW, 1, geo.dy_top, geo.dy_left, DR, DP)
    imap = interleave_map(W, s, QC)
    vec_store = W >= 2 and QC >= 2

    @T.prim_func(s_tir=True)
    def block_dgrad(dy: T.handle, v: T.handle, tp: T.handle, tb: T.handle, to: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "block_dgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        TP = T.match_buffer(tp, (C * s * s + 1,), "int32")
        TB = T.match_buffer(tb, (cap,), "int32")
        TO = T.match_buffer(to, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        D = T.sblock_alloc_buffer((N, DS), "float32")
        for n, o in T.grid(N, O):
            with T.sblock("fill"):
                vn, vo = T.axis.remap("SS", [n, o])
                T.reads(DY[vn, vo, 0:OH, 0:OW])
                T.writes(D[vn, vo * PLANE : vo * PLANE + PLANE])
                fill(D, vn, vo * PLANE, DY, vn, vo)
        # Row tile outside channels: one tile's dy rows (all channels) stay in L1 across channels.
        for n, t, a, c in T.grid(N, TILES, s, C):
            with T.sblock("dgrad"):
                vn, vt, va, vc = T.axis.remap("SSSS", [n, t, a, c])
                T.reads(TP[0 : C * s * s + 1], TB[0:cap], TO[0:cap], V[0:nnz, 0:4], D[vn, 0:DS])
                T.writes(DX[vn, vc, 0:H, 0:W])  # rows s*(t*rows + i) + a; a strided region is not expressible
                acc = T.sblock_alloc_buffer((s, rows, QC), "float32", scope="local")
                for b in T.unroll(s):
                    for i in T.unroll(rows):
                        for w in T.vectorized(QC):
                            acc[b, i, w] = T.float32(0)
                for b in T.unroll(s):
                    for j in range(TP[(vc * s + va) * s + b], TP[(vc * s + va) * s + b + 1]):
                        for r in T.unroll(4):
                            for i in T.unroll(rows):
                                for w in T.vectorized(QC):
                                    acc[b, i, w] = acc[b, i, w] + V[TB[j], r] * D[vn, TO[j] + r * PLANE + (vt * rows + i) * DP + w]
                for i in T.unroll(rows):
                    if s * (vt * rows + i) + va < H:
                        if vec_store:
                            DX[vn, vc, s * (vt * rows + i) + va, T.ramp(0, 1, W)] = T.Shuffle(
                                [acc[b, i, T.ramp(0, 1, QC)] for b in range(s)], imap
                            )
                        else:
                            for iw in range(W):
                                DX[vn, vc, s * (vt * rows + i) + va, iw] = acc[iw % s, i, iw // s]

    return block_dgrad
