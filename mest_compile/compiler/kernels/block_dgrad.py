"""Block-scheme input gradient: `dx = conv2d_input(dy, weight * mask)`.

One complete block per (image, dx row tile, dx row phase `a`). Inside it, per chunk `k` of
filter groups and input channel `c`, a register tile accumulates the `s` column phases of
`rows` dx rows: for each phase `b`, a data-dependent loop over the blocks of chunk `k` that feed
row `(c, a, b)` adds 4 values times 4 rows of the `dy` scratch. Each loaded vector feeds one
FMA, so the kernel lives on load bandwidth: chunking the filter groups keeps the scratch rows a
tile touches in L1 (a tile's partial sums wait in a small buffer between chunks), and narrow
rows read from per-shift copies so that every load is aligned. The phases are interleaved back
into dx rows by one constant shuffle per row: stride 2 costs no zero insertion and no scattered
stores.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.block import block_index_dtype
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import interleave_map, make_fill
from mest_compile.compiler.kernels.indices import index_reader


def block_dgrad(geo: ConvGeometry, rows: int, chunk_groups: int) -> tirx.PrimFunc:
    """TIR of the input-gradient kernel `f(dy, values, dx_ptr, dx_blk, dx_off, dx)`.

    Args:
        geo: the layer (batch and nnz symbolic).
        rows: dx rows (per phase) per register tile; must divide `geo.dx_rows`.
        chunk_groups: filter groups per chunk; the format must be packed with the same value.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s = geo.out_h, geo.out_w, geo.stride
    QR, QC = geo.dx_rows, geo.dx_cols
    DR, DP, PLANE, DS, NSH = geo.dy_rows, geo.dy_pitch, geo.dy_plane, geo.dy_size, geo.dy_copies
    G = O // 4
    assert QR % rows == 0, (QR, rows)
    TILES = QR // rows
    K = -(-G // chunk_groups)
    # Partial sums of a tile between chunks (c, b, row, lane); unused with one chunk.
    PC = C if K > 1 else 1
    if NSH > 3:
        raise NotImplementedError(f"input gradient with {NSH} scratch copies (kernels wider than 3)")
    # Copy `sh` of the scratch holds dy shifted left by `sh - dy_left` columns (one copy: all
    # shifts read from the same padded rows).
    fill0, fill1, fill2 = [make_fill(O, OH, OW, 1, geo.dy_top, geo.dy_left - sh, DR, DP) for sh in range(3)]
    SHIFT = O * PLANE
    imap = interleave_map(W, s, QC)
    vec_store = W >= 2 and QC >= 2
    chunked = K > 1
    IDX, ix = index_reader(block_index_dtype(geo))  # the format's compact per-block indices

    @T.prim_func(s_tir=True)
    def block_dgrad(dy: T.handle, v: T.handle, tp: T.handle, tb: T.handle, to: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "block_dgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        TP = T.match_buffer(tp, (K * C * s * s + 1,), "int32")
        TB = T.match_buffer(tb, (cap,), IDX)
        TO = T.match_buffer(to, (cap,), IDX)
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        D = T.sblock_alloc_buffer((N, DS), "float32")
        for n, o in T.grid(N, O):
            with T.sblock("fill"):
                vn, vo = T.axis.remap("SS", [n, o])
                T.reads(DY[vn, vo, 0:OH, 0:OW])
                T.writes(D[vn, vo * PLANE : vo * PLANE + (NSH - 1) * SHIFT + PLANE])
                fill0(D, vn, vo * PLANE, DY, vn, vo)
                if NSH > 1:
                    fill1(D, vn, SHIFT + vo * PLANE, DY, vn, vo)
                if NSH > 2:
                    fill2(D, vn, 2 * SHIFT + vo * PLANE, DY, vn, vo)
        # Row tile outermost: one tile's dy rows of a chunk stay in L1 across channels.
        for n, t, a in T.grid(N, TILES, s):
            with T.sblock("dgrad"):
                vn, vt, va = T.axis.remap("SSS", [n, t, a])
                T.reads(TP[0 : K * C * s * s + 1], TB[0:cap], TO[0:cap], V[0:nnz, 0:4], D[vn, 0:DS])
                # dx rows s*(t*rows + i) + a: a strided region, so the whole image is declared.
                T.writes(DX[vn, 0:C, 0:H, 0:W])
                acc = T.sblock_alloc_buffer((s, rows, QC), "float32", scope="local")
                part = T.sblock_alloc_buffer((PC, s, rows, QC), "float32")
                # TVM trap: a block-local buffer is allocated at the LCA of its accesses, ignoring
                # loop-carried values. Without an access outside the chunk loop, `part` would be
                # re-allocated (and compacted to one channel) per (k, c) iteration, silently
                # losing the partial sums. This store pins it to the block.
                part[0, 0, 0, 0] = T.float32(0)
                for k, c in T.grid(K, C):
                    for b in T.unroll(s):
                        for i in T.unroll(rows):
                            if chunked and k > 0:
                                for w in T.vectorized(QC):
                                    acc[b, i, w] = part[c, b, i, w]
                            else:
                                for w in T.vectorized(QC):
                                    acc[b, i, w] = T.float32(0)
                    for b in T.unroll(s):
                        for j in range(TP[((k * C + c) * s + va) * s + b], TP[((k * C + c) * s + va) * s + b + 1]):
                            for r in T.unroll(4):
                                for i in T.unroll(rows):
                                    for w in T.vectorized(QC):
                                        acc[b, i, w] = acc[b, i, w] + V[ix(TB[j]), r] * D[vn, ix(TO[j]) + r * PLANE + (vt * rows + i) * DP + w]
                    if chunked and k < K - 1:
                        for b in T.unroll(s):
                            for i in T.unroll(rows):
                                for w in T.vectorized(QC):
                                    part[c, b, i, w] = acc[b, i, w]
                    else:
                        for i in T.unroll(rows):
                            if s * (vt * rows + i) + va < H:
                                if vec_store:
                                    DX[vn, c, s * (vt * rows + i) + va, T.ramp(0, 1, W)] = T.Shuffle(
                                        [acc[b, i, T.ramp(0, 1, QC)] for b in range(s)], imap
                                    )
                                else:
                                    for iw in range(W):
                                        DX[vn, c, s * (vt * rows + i) + va, iw] = acc[iw % s, i, iw // s]

    return block_dgrad
