"""Channel-scheme input and weight gradients for GPUs: dense conv gradients over the kept filters.

Both take the format's `kept` list (packed filter `j` is output channel `kept[j]`, `j < nnz`) and
the kept filters' values `(nnz, C, KH, KW)`, so the forward's packing drives them unchanged.

- Input gradient `f(dy, values, kept, dx)`: a work item per input pixel `(n, c, ih, iw)` walks
  the taps, and for each tap that maps to an output pixel at this stride (tested once per tap,
  outside the filter loop) adds `values[j, c, kh, kw] * dy[n, kept[j], oh, ow]` over the kept
  filters `j`. Neighbouring work items read neighbouring `dy` pixels and the same weight.
- Weight gradient `f(x, dy, kept, dv)`: a reduction block over the kept values `(j, c, kh, kw)`
  that sums `dy[n, kept[j]] * x[n, c]` shifted by the tap over the batch and the output pixels,
  which the GPU schedule splits over a work group's threads: pruned filters cost nothing.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


def channel_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel (unscheduled; one complete block `conv`).

    Buffers: `dy (N, O, OH, OW)`, `values (nnz, C, KH, KW)`, `kept (cap,)`, `dx (N, C, H, W)`;
    batch, nnz and cap stay symbolic.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    KH, KW, OH, OW, s, p = geo.kernel_h, geo.kernel_w, geo.out_h, geo.out_w, geo.stride, geo.padding

    @T.prim_func(s_tir=True)
    def channel_dgrad_gpu(dy: T.handle, v: T.handle, kp: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "channel_dgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, C, KH, KW), "float32")
        KEPT = T.match_buffer(kp, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, c, ih, iw in T.grid(N, C, H, W):
            with T.sblock("conv"):
                vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, ih, iw])
                T.reads(KEPT[0:cap], V[0:nnz, vc, 0:KH, 0:KW], DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(DX[vn, vc, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a layer without kept filters gets zeros
                for kh in range(KH):
                    th = vh + p - kh  # output row times the stride
                    if th >= 0 and T.truncmod(th, s) == 0 and T.truncdiv(th, s) < OH:
                        for kw in range(KW):
                            tw = vw + p - kw
                            if tw >= 0 and T.truncmod(tw, s) == 0 and T.truncdiv(tw, s) < OW:
                                for j in range(nnz):
                                    acc[0] = acc[0] + V[j, vc, kh, kw] * DY[
                                        vn, KEPT[j], T.truncdiv(th, s), T.truncdiv(tw, s)]
                DX[vn, vc, vh, vw] = acc[0]

    return channel_dgrad_gpu


def channel_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel (unscheduled): block `conv` reduces images and pixels
    (its last three axes) for each kept value `(j, c, kh, kw)`.

    The body is one store with no bound variables (the form TVM's cross-thread reduction needs),
    so the input row and column are expressions written inline by `row` and `col`.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    KH, KW, OH, OW, s, p = geo.kernel_h, geo.kernel_w, geo.out_h, geo.out_w, geo.stride, geo.padding

    def row(oh: Any, kh: Any) -> Any:
        return oh * s - p + kh

    def col(ow: Any, kw: Any) -> Any:
        return ow * s - p + kw

    @T.prim_func(s_tir=True)
    def channel_wgrad_gpu(x: T.handle, dy: T.handle, kp: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "channel_wgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        KEPT = T.match_buffer(kp, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz, C, KH, KW), "float32")
        for j, c, kh, kw, n, oh, ow in T.grid(nnz, C, KH, KW, N, OH, OW):
            with T.sblock("conv"):
                vj, vc, vkh, vkw, vn, vh, vw = T.axis.remap("SSSSRRR", [j, c, kh, kw, n, oh, ow])
                T.reads(KEPT[vj], X[vn, vc, 0:H, 0:W], DY[vn, 0:O, vh, vw])
                T.writes(DV[vj, vc, vkh, vkw])
                with T.init():
                    DV[vj, vc, vkh, vkw] = T.float32(0)
                DV[vj, vc, vkh, vkw] = DV[vj, vc, vkh, vkw] + DY[vn, KEPT[vj], vh, vw] * T.if_then_else(
                    row(vh, vkh) >= 0 and row(vh, vkh) < H and col(vw, vkw) >= 0 and col(vw, vkw) < W,
                    X[vn, vc, row(vh, vkh), col(vw, vkw)],
                    T.float32(0),
                )

    return channel_wgrad_gpu
