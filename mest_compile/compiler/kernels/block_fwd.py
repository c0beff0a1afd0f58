"""Block-scheme forward: `y = conv2d(x, weight * mask)` as 4-row micro-kernels over kept columns.

One complete block per (image, output row tile, filter group): a `4 x rows x OW` register tile,
zeroed explicitly (a group with no kept block writes zeros), then one data-dependent loop over
the group's kept columns, each a broadcast of 4 values times `rows` contiguous scratch rows.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.block import block_index_dtype
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import make_fill
from mest_compile.compiler.kernels.indices import index_reader


def block_forward(geo: ConvGeometry, rows: int) -> tirx.PrimFunc:
    """TIR of the forward kernel `f(x, values, group_ptr, x_off, y)`.

    Args:
        geo: the layer; batch size and the number of kept blocks stay symbolic.
        rows: output rows per register tile (must divide `out_h`).

    Buffers: `x (N, C, H, W)`, `values (nnz, 4)`, `group_ptr (O/4 + 1,) int32`,
    `x_off (cap,)` (compact, `block_index_dtype`), `y (N, O, OH, OW)` (written).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    G, P, XR, PITCH = O // 4, geo.x_size, geo.x_rows, geo.x_pitch
    assert OH % rows == 0, (OH, rows)
    TILES = OH // rows
    fill = make_fill(C, H, W, s, p, p, XR, geo.x_phase_w)
    IDX, ix = index_reader(block_index_dtype(geo))  # the format's compact per-block indices

    @T.prim_func(s_tir=True)
    def block_fwd(x: T.handle, v: T.handle, gp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "block_fwd", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        GP = T.match_buffer(gp, (G + 1,), "int32")
        XO = T.match_buffer(xo, (cap,), IDX)
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        S = T.sblock_alloc_buffer((N, P), "float32")
        for n, q in T.grid(N, s * C):
            with T.sblock("fill"):
                vn, vq = T.axis.remap("SS", [n, q])
                T.reads(X[vn, vq % C, 0:H, 0:W])
                T.writes(S[vn, vq * XR * PITCH : vq * XR * PITCH + XR * PITCH])
                fill(S, vn, vq * XR * PITCH, X, vn, vq)
        for n, t, g in T.grid(N, TILES, G):
            with T.sblock("conv"):
                vn, vt, vg = T.axis.remap("SSS", [n, t, g])
                T.reads(GP[vg : vg + 2], V[0:nnz, 0:4], XO[0:cap], S[vn, 0:P])
                T.writes(Y[vn, vg * 4 : vg * 4 + 4, vt * rows : vt * rows + rows, 0:OW])
                acc = T.sblock_alloc_buffer((4, rows, OW), "float32", scope="local")
                for r in T.unroll(4):
                    for i in T.unroll(rows):
                        for w in T.vectorized(OW):
                            acc[r, i, w] = T.float32(0)
                for j in range(GP[vg], GP[vg + 1]):
                    for r in T.unroll(4):
                        for i in T.unroll(rows):
                            for w in T.vectorized(OW):
                                acc[r, i, w] = acc[r, i, w] + V[j, r] * S[vn, ix(XO[j]) + (vt * rows + i) * PITCH + w]
                for r in T.unroll(4):
                    for i in T.unroll(rows):
                        for w in T.vectorized(OW):
                            Y[vn, vg * 4 + r, vt * rows + i, w] = acc[r, i, w]

    return block_fwd
