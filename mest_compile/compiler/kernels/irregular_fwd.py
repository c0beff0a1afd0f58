"""Irregular forward: `y = conv2d(x, weight * mask)` as row-wise CSR over output filters.

One complete block per (image, output row tile, filter): a `rows x OW` register tile, zeroed
explicitly (a filter with no kept weight writes zeros), then the data-dependent loop over the
filter's nonzeros, each one broadcast value times `rows` contiguous input-scratch rows. The
vector loop over output pixels sits *inside* the data-dependent loop and the accumulator is a
vector (TVM_NOTES §3.5: vectorising around the data-dependent loop miscompiles). Every loaded
vector feeds exactly one FMA (there is no reuse across nonzeros of an unstructured row), so this
kernel is bound by load bandwidth: one vector load per FMA plus, per nonzero, two scalar index
loads and one broadcast.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import make_fill


def irregular_forward(geo: ConvGeometry, rows: int) -> tirx.PrimFunc:
    """TIR of the forward kernel `f(x, values, row_ptr, x_off, y)`.

    Args:
        geo: the layer; batch size and the number of nonzeros stay symbolic.
        rows: output rows per register tile (must divide `out_h`).

    Buffers: `x (N, C, H, W)`, `values (nnz,)`, `row_ptr (O + 1,) int32`, `x_off (cap,) int32`,
    `y (N, O, OH, OW)` (written).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    P, XR, PITCH = geo.x_size, geo.x_rows, geo.x_pitch
    assert OH % rows == 0, (OH, rows)
    TILES = OH // rows
    fill = make_fill(C, H, W, s, p, p, XR, geo.x_phase_w)

    @T.prim_func(s_tir=True)
    def irregular_fwd(x: T.handle, v: T.handle, rp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "irregular_fwd", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz,), "float32")
        RP = T.match_buffer(rp, (O + 1,), "int32")
        XO = T.match_buffer(xo, (cap,), "int32")
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        S = T.sblock_alloc_buffer((N, P), "float32")
        for n, q in T.grid(N, s * C):
            with T.sblock("fill"):
                vn, vq = T.axis.remap("SS", [n, q])
                T.reads(X[vn, vq % C, 0:H, 0:W])
                T.writes(S[vn, vq * XR * PITCH : vq * XR * PITCH + XR * PITCH])
                fill(S, vn, vq * XR * PITCH, X, vn, vq)
        for n, t, o in T.grid(N, TILES, O):
            with T.sblock("conv"):
                vn, vt, vo = T.axis.remap("SSS", [n, t, o])
                T.reads(RP[vo : vo + 2], V[0:nnz], XO[0:cap], S[vn, 0:P])
                T.writes(Y[vn, vo, vt * rows : vt * rows + rows, 0:OW])
                acc = T.sblock_alloc_buffer((rows, OW), "float32", scope="local")
                for i in T.unroll(rows):
                    for w in T.vectorized(OW):
                        acc[i, w] = T.float32(0)
                for j in range(RP[vo], RP[vo + 1]):
                    for i in T.unroll(rows):
                        for w in T.vectorized(OW):
                            acc[i, w] = acc[i, w] + V[j] * S[vn, XO[j] + (vt * rows + i) * PITCH + w]
                for i in T.unroll(rows):
                    for w in T.vectorized(OW):
                        Y[vn, vo, vt * rows + i, w] = acc[i, w]

    return irregular_fwd
