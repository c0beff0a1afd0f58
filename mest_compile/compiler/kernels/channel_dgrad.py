"""Channel-scheme input gradient: `dx = conv_transpose(dy[:, kept], weight[kept])`.

A dense reduction over the kept output channels only. Per image, the kept planes of `dy` are
gathered into the gradient scratch (zero-padded, with one copy per column shift for narrow rows;
see `geometry.py`), which is small enough to stay in L1. One complete block per image; inside it,
per tile of `channels` input channels, dx row tile and dx row phase `a`, a register tile of
`channels x s x rows x QC` accumulates, for every kept filter and every tap of that phase, a
broadcast weight times `rows` scratch vectors: each loaded vector feeds `channels` FMAs. All
taps and offsets are static (every column is kept); only the filter loop has a runtime bound.
Stride-2 phases are interleaved back into dx rows by one constant shuffle per row.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import interleave_map, make_fill


def channel_dgrad(geo: ConvGeometry, channels: int, rows: int) -> tirx.PrimFunc:
    """TIR of the input-gradient kernel `f(dy, values, kept, dx)`.

    Args:
        geo: the layer (batch, kept count and capacity symbolic).
        channels: input channels per register tile (a smaller tail tile covers the rest).
        rows: dx rows (per phase) per register tile; must divide `geo.dx_rows`.

    Buffers: `dy (N, O, OH, OW)`, `values (nnz, C, kh, kw)`, `kept (cap,) int32`,
    `dx (N, C, H, W)` (written).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    KH, KW = geo.kernel_h, geo.kernel_w
    QR, QC = geo.dx_rows, geo.dx_cols
    DR, DP, PLANE, DS, NSH = geo.dy_rows, geo.dy_pitch, geo.dy_plane, geo.dy_size, geo.dy_copies
    TOP, LEFT = geo.dy_top, geo.dy_left
    assert QR % rows == 0, (QR, rows)
    TILES = QR // rows
    if NSH > 3:
        raise NotImplementedError(f"input gradient with {NSH} scratch copies (kernels wider than 3)")
    # The scratch is laid out for all O channels (`geometry.py`); packed filter j fills plane j.
    fill0, fill1, fill2 = [make_fill(O, OH, OW, 1, TOP, LEFT - sh, DR, DP) for sh in range(3)]
    SHIFT = O * PLANE
    # Taps of phase a: kh = (a + p) % s + s * u for u < KU (and kh < KH); dy row offset
    # (a + p) // s - u. Likewise kw, v, b.
    KU, KV = -(-KH // s), -(-KW // s)
    imap = interleave_map(W, s, QC)
    vec_store = W >= 2 and QC >= 2
    # Column shift `sh` selects a scratch copy (narrow rows) or a column offset (one copy).
    SHIFT_MUL = SHIFT if NSH > 1 else 1
    FULL, REM = C // channels, C % channels

    def make_micro(cn: int):
        @T.macro
        def micro(D, V, DX, acc, vn, vt, c0, nnz):
            for a in T.unroll(s):
                for cc in T.unroll(cn):
                    for b in T.unroll(s):
                        for i in T.unroll(rows):
                            for w in T.vectorized(QC):
                                acc[cc, b, i, w] = T.float32(0)
                for j in range(nnz):
                    for b in T.unroll(s):
                        for u in T.unroll(KU):
                            for v in T.unroll(KV):
                                if (a + p) % s + s * u < KH and (b + p) % s + s * v < KW:
                                    for cc in T.unroll(cn):
                                        for i in T.unroll(rows):
                                            for w in T.vectorized(QC):
                                                acc[cc, b, i, w] = acc[cc, b, i, w] + V[
                                                    j, c0 + cc, (a + p) % s + s * u, (b + p) % s + s * v
                                                ] * D[
                                                    vn,
                                                    j * PLANE
                                                    + ((b + p) // s - v + LEFT) * SHIFT_MUL
                                                    + ((a + p) // s - u + TOP + vt * rows + i) * DP
                                                    + w,
                                                ]
                for cc in T.unroll(cn):
                    for i in T.unroll(rows):
                        if s * (vt * rows + i) + a < H:
                            if vec_store:
                                DX[vn, c0 + cc, s * (vt * rows + i) + a, T.ramp(0, 1, W)] = T.Shuffle(
                                    [acc[cc, b, i, T.ramp(0, 1, QC)] for b in range(s)], imap
                                )
                            else:
                                for iw in range(W):
                                    DX[vn, c0 + cc, s * (vt * rows + i) + a, iw] = acc[cc, iw % s, i, iw // s]

        return micro

    micro_full = make_micro(channels)
    micro_rem = make_micro(max(1, REM))
    has_rem = REM > 0

    @T.prim_func(s_tir=True)
    def channel_dgrad(dy: T.handle, v: T.handle, kp: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "channel_dgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, C, KH, KW), "float32")
        KEPT = T.match_buffer(kp, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        D = T.sblock_alloc_buffer((N, DS), "float32")
        for n, j in T.grid(N, nnz):
            with T.sblock("fill"):
                vn, vj = T.axis.remap("SS", [n, j])
                T.reads(KEPT[vj], DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(D[vn, vj * PLANE : vj * PLANE + (NSH - 1) * SHIFT + PLANE])
                fill0(D, vn, vj * PLANE, DY, vn, KEPT[vj])
                if NSH > 1:
                    fill1(D, vn, SHIFT + vj * PLANE, DY, vn, KEPT[vj])
                if NSH > 2:
                    fill2(D, vn, 2 * SHIFT + vj * PLANE, DY, vn, KEPT[vj])
        for n in range(N):
            with T.sblock("dgrad"):
                vn = T.axis.spatial(N, n)
                T.reads(V[0:nnz, 0:C, 0:KH, 0:KW], D[vn, 0 : nnz * PLANE + (NSH - 1) * SHIFT])
                T.writes(DX[vn, 0:C, 0:H, 0:W])
                acc = T.sblock_alloc_buffer((channels, s, rows, QC), "float32", scope="local")
                # Channel tiles outermost: the stores stream through `channels` dx planes at a
                # time. Row tiles outermost wrote 2-4 rows into every plane in turn, and planes
                # 4 KiB apart all fall into one L1 set (measured: x1.3 slower on 32x32 layers).
                for ct in range(FULL):
                    for t in range(TILES):
                        micro_full(D, V, DX, acc, vn, t, ct * channels, nnz)
                if has_rem:
                    for t in range(TILES):
                        micro_rem(D, V, DX, acc, vn, t, FULL * channels, nnz)

    return channel_dgrad
