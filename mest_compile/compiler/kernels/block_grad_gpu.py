"""Block-scheme input and weight gradients for GPUs.

Both read each kept block's position from one code per block, `code[j] = g * C*KH*KW + column`
(filter group `g`, column `c*KH*KW + kh*KW + kw`), which `formats/block_gpu.py` derives from the
packed format, so the forward's values and group pointers are shared.

- Input gradient `f(dy, values, t_ptr, t_blk, code, dx)`: a work item per input pixel `(n, c, ih,
  iw)` walks the kept blocks of channel `c` (`t_blk[t_ptr[c]:t_ptr[c+1]]`) and adds, for the
  output pixel each tap maps to (if any at this stride), the 4 filters' `values x dy`.
- Weight gradient `f(x, dy, code, dv)`: a reduction block over kept values `(j, r)` that sums
  `dy[n, 4g+r] * x[n, c]` shifted by the tap over the batch and the output, which the GPU
  schedule splits over a work group's threads: the gradient is computed for kept weights only.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


def block_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel (unscheduled; one complete block `conv`)."""
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    KH, KW, OH, OW, s, p = geo.kernel_h, geo.kernel_w, geo.out_h, geo.out_w, geo.stride, geo.padding
    KK, COLS = KH * KW, C * KH * KW

    @T.prim_func(s_tir=True)
    def block_dgrad_gpu(dy: T.handle, v: T.handle, tp: T.handle, tb: T.handle, code: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "block_dgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        TP = T.match_buffer(tp, (C + 1,), "int32")
        TB = T.match_buffer(tb, (cap,), "int32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, c, ih, iw in T.grid(N, C, H, W):
            with T.sblock("conv"):
                vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, ih, iw])
                T.reads(TP[vc : vc + 2], TB[0:cap], CODE[0:cap], V[0:nnz, 0:4], DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(DX[vn, vc, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a channel without kept blocks gets zeros
                for i in range(TP[vc], TP[vc + 1]):
                    j = TB[i]
                    tap = T.truncmod(T.truncmod(CODE[j], COLS), KK)
                    g = T.truncdiv(CODE[j], COLS)
                    th = vh + p - T.truncdiv(tap, KW)  # output row times the stride
                    tw = vw + p - T.truncmod(tap, KW)
                    if th >= 0 and tw >= 0 and T.truncmod(th, s) == 0 and T.truncmod(tw, s) == 0:
                        if T.truncdiv(th, s) < OH and T.truncdiv(tw, s) < OW:
                            for r in range(4):
                                acc[0] = acc[0] + V[j, r] * DY[vn, g * 4 + r, T.truncdiv(th, s), T.truncdiv(tw, s)]
                DX[vn, vc, vh, vw] = acc[0]

    return block_dgrad_gpu


def block_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel (unscheduled): block `conv` reduces images and pixels
    (its last three axes) for each kept value `(j, r)`.

    The body is one store with no bound variables (the form TVM's cross-thread reduction needs),
    so the block's filter group, channel and tap are expressions of `code[j]` written inline.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    KH, KW, OH, OW, s, p = geo.kernel_h, geo.kernel_w, geo.out_h, geo.out_w, geo.stride, geo.padding
    KK, COLS = KH * KW, C * KH * KW

    def row(code: Any, oh: Any) -> Any:
        return oh * s - p + tirx.truncdiv(tirx.truncmod(code, KK), KW)

    def col(code: Any, ow: Any) -> Any:
        return ow * s - p + tirx.truncmod(code, KW)

    @T.prim_func(s_tir=True)
    def block_wgrad_gpu(x: T.handle, dy: T.handle, code: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "block_wgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz, 4), "float32")
        for j, r, n, oh, ow in T.grid(nnz, 4, N, OH, OW):
            with T.sblock("conv"):
                vj, vr, vn, vh, vw = T.axis.remap("SSRRR", [j, r, n, oh, ow])
                T.reads(CODE[vj], X[vn, 0:C, 0:H, 0:W], DY[vn, 0:O, vh, vw])
                T.writes(DV[vj, vr])
                with T.init():
                    DV[vj, vr] = T.float32(0)
                DV[vj, vr] = DV[vj, vr] + DY[vn, T.truncdiv(CODE[vj], COLS) * 4 + vr, vh, vw] * T.if_then_else(
                    row(CODE[vj], vh) >= 0 and row(CODE[vj], vh) < H and col(CODE[vj], vw) >= 0
                    and col(CODE[vj], vw) < W,
                    X[vn, T.truncdiv(T.truncmod(CODE[vj], COLS), KK), row(CODE[vj], vh), col(CODE[vj], vw)],
                    T.float32(0),
                )

    return block_wgrad_gpu
