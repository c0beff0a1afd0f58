"""Pattern-scheme forward: `y = conv2d(x, weight * mask)` with pattern-specialised inner loops.

One complete block per (image, output row tile, filter): a `rows x OW` register tile, zeroed
explicitly (an empty filter writes zeros), then 8 data-dependent loops, one per pattern, over
the filter's kernels of that pattern (PatDNN's filter-kernel reorder). In pattern `p`'s loop the
4 tap offsets are constants, so one kernel is 4 broadcasts and `4 x rows` vector FMAs over
contiguous input-scratch rows with no index arithmetic; taps in the same kernel column read the
same scratch row for neighbouring output rows, so LLVM loads each row once per kernel.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, index_dtype
from mest_compile.compiler.kernels.fill import make_fill
from mest_compile.compiler.kernels.pattern_taps import InputLayout, chain, forward_tap_offsets, input_layout


def _pattern_loop(p: int, offsets: list[int], rows: int, ow: int, pitch: int, plane: int):
    """Maker of the macro that adds pattern `p`'s kernels of one filter into the tile."""
    d0, d1, d2, d3 = offsets

    def make(prev):
        first = prev is None

        @T.macro
        def run(acc, S, V, FP, XO, vn, vt, vo):
            if not first:
                prev(acc, S, V, FP, XO, vn, vt, vo)
            # Indices are read as int32 (the buffers may be int16): loop variable and addresses stay int32.
            for j in range(T.Cast("int32", FP[vo * NUM_PATTERNS + p]),
                           T.Cast("int32", FP[vo * NUM_PATTERNS + p + 1])):
                for i in T.unroll(rows):
                    for w in T.vectorized(ow):
                        acc[i, w] = (
                            acc[i, w]
                            + V[j, 0] * S[vn, T.Cast("int32", XO[j]) * plane + d0 + (vt * rows + i) * pitch + w]
                            + V[j, 1] * S[vn, T.Cast("int32", XO[j]) * plane + d1 + (vt * rows + i) * pitch + w]
                            + V[j, 2] * S[vn, T.Cast("int32", XO[j]) * plane + d2 + (vt * rows + i) * pitch + w]
                            + V[j, 3] * S[vn, T.Cast("int32", XO[j]) * plane + d3 + (vt * rows + i) * pitch + w]
                        )

        return run

    return make


def pattern_forward(geo: ConvGeometry, rows: int, layout: InputLayout | None = None) -> tirx.PrimFunc:
    """TIR of the forward kernel `f(x, values, fwd_ptr, x_off, y)`.

    Args:
        geo: the layer (3x3); batch size and the number of kept kernels stay symbolic.
        rows: output rows per register tile (must divide `out_h`).
        layout: the input scratch (default `input_layout(geo)`); kernel `j`'s channel base is
            `x_off[j] * layout.plane`.

    Buffers: `x (N, C, H, W)`, `values (nnz, 4)`, `fwd_ptr (O*8 + 1,)` and `x_off (cap,)` of
    `index_dtype(geo)`, `y (N, O, OH, OW)` (written).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    layout = layout or input_layout(geo)
    P, XR, PITCH = layout.size, layout.rows, layout.pitch
    assert OH % rows == 0, (OH, rows)
    TILES = OH // rows
    FPN = O * NUM_PATTERNS + 1
    IDX = index_dtype(geo)
    fill = make_fill(C, H, W, s, p, p, XR, layout.phase_w)
    runs = chain([_pattern_loop(q, offs, rows, OW, PITCH, layout.plane)
                  for q, offs in enumerate(forward_tap_offsets(layout))])

    @T.prim_func(s_tir=True)
    def pattern_fwd(x: T.handle, v: T.handle, fp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "pattern_fwd", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        FP = T.match_buffer(fp, (FPN,), IDX)
        XO = T.match_buffer(xo, (cap,), IDX)
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
                T.reads(FP[vo * NUM_PATTERNS : vo * NUM_PATTERNS + NUM_PATTERNS + 1], V[0:nnz, 0:4], XO[0:cap], S[vn, 0:P])
                T.writes(Y[vn, vo, vt * rows : vt * rows + rows, 0:OW])
                acc = T.sblock_alloc_buffer((rows, OW), "float32", scope="local")
                for i in T.unroll(rows):
                    for w in T.vectorized(OW):
                        acc[i, w] = T.float32(0)
                runs(acc, S, V, FP, XO, vn, vt, vo)
                for i in T.unroll(rows):
                    for w in T.vectorized(OW):
                        Y[vn, vo, vt * rows + i, w] = acc[i, w]

    return pattern_fwd
