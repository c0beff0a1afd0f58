"""Irregular-scheme input and weight gradients for GPUs.

Both read each nonzero's position from one code per nonzero, `code[j] = o * C*KH*KW + c*KH*KW +
kh*KW + kw`, which `formats/irregular_gpu.py` derives from the packed format, so the forward's
values (one weight per nonzero, in CSR order) are shared.

- Input gradient `f(dy, values, t_ptr, t_nz, code, dx)`: a work item per input pixel `(n, c, ih,
  iw)` walks the nonzeros of channel `c` (`t_nz[t_ptr[c]:t_ptr[c+1]]`) and adds, for the output
  pixel each tap maps to (if any at this stride), `values x dy` of the nonzero's filter.
- Weight gradient `f(x, dy, code, dv)`: a reduction block over the nonzeros `j` that sums
  `dy[n, o] * x[n, c]` shifted by the tap over the batch and the output, which the GPU schedule
  splits over a work group's threads: the gradient is computed for kept weights only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


@dataclass(frozen=True)
class _Code:
    """Decodes a nonzero's code into filter, channel and tap (TIR expressions; codes are
    non-negative, so truncating division avoids floor-division fix-ups)."""

    geo: ConvGeometry

    def filter(self, code: Any) -> Any:
        return tirx.truncdiv(code, self.geo.columns)

    def channel(self, code: Any) -> Any:
        return tirx.truncdiv(tirx.truncmod(code, self.geo.columns), self.geo.kernel_h * self.geo.kernel_w)

    def kh(self, code: Any) -> Any:
        return tirx.truncdiv(tirx.truncmod(code, self.geo.kernel_h * self.geo.kernel_w), self.geo.kernel_w)

    def kw(self, code: Any) -> Any:
        return tirx.truncmod(code, self.geo.kernel_w)

    def row(self, code: Any, oh: Any) -> Any:
        """The input row output row `oh` reads through the nonzero's tap."""
        return oh * self.geo.stride - self.geo.padding + self.kh(code)

    def col(self, code: Any, ow: Any) -> Any:
        """The input column output column `ow` reads through the nonzero's tap."""
        return ow * self.geo.stride - self.geo.padding + self.kw(code)


def irregular_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel (unscheduled; one complete block `conv`).

    Buffers: `dy (N, O, OH, OW)`, `values (nnz,)`, `t_ptr (C + 1,)`, `t_nz (cap,)`, `code (cap,)`,
    `dx (N, C, H, W)`; batch, nnz and cap stay symbolic.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    cd = _Code(geo)

    @T.prim_func(s_tir=True)
    def irregular_dgrad_gpu(dy: T.handle, v: T.handle, tp: T.handle, tn: T.handle, code: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "irregular_dgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz,), "float32")
        TP = T.match_buffer(tp, (C + 1,), "int32")
        TN = T.match_buffer(tn, (cap,), "int32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, c, ih, iw in T.grid(N, C, H, W):
            with T.sblock("conv"):
                vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, ih, iw])
                T.reads(TP[vc : vc + 2], TN[0:cap], CODE[0:cap], V[0:nnz], DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(DX[vn, vc, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a channel without nonzeros gets zeros
                for i in range(TP[vc], TP[vc + 1]):
                    j = TN[i]
                    th = vh + p - cd.kh(CODE[j])  # output row times the stride
                    tw = vw + p - cd.kw(CODE[j])
                    if th >= 0 and tw >= 0 and T.truncmod(th, s) == 0 and T.truncmod(tw, s) == 0:
                        if T.truncdiv(th, s) < OH and T.truncdiv(tw, s) < OW:
                            acc[0] = acc[0] + V[j] * DY[vn, cd.filter(CODE[j]), T.truncdiv(th, s), T.truncdiv(tw, s)]
                DX[vn, vc, vh, vw] = acc[0]

    return irregular_dgrad_gpu


def irregular_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel (unscheduled): block `conv` reduces images and pixels
    (its last three axes) for each nonzero `j`.

    The body is one store with no bound variables (the form TVM's cross-thread reduction needs),
    so the nonzero's filter, channel and tap are expressions of `code[j]` written inline.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW = geo.out_h, geo.out_w
    cd = _Code(geo)

    @T.prim_func(s_tir=True)
    def irregular_wgrad_gpu(x: T.handle, dy: T.handle, code: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "irregular_wgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz,), "float32")
        for j, n, oh, ow in T.grid(nnz, N, OH, OW):
            with T.sblock("conv"):
                vj, vn, vh, vw = T.axis.remap("SRRR", [j, n, oh, ow])
                T.reads(CODE[vj], X[vn, 0:C, 0:H, 0:W], DY[vn, 0:O, vh, vw])
                T.writes(DV[vj])
                with T.init():
                    DV[vj] = T.float32(0)
                DV[vj] = DV[vj] + DY[vn, cd.filter(CODE[vj]), vh, vw] * T.if_then_else(
                    cd.row(CODE[vj], vh) >= 0 and cd.row(CODE[vj], vh) < H and cd.col(CODE[vj], vw) >= 0
                    and cd.col(CODE[vj], vw) < W,
                    X[vn, cd.channel(CODE[vj]), cd.row(CODE[vj], vh), cd.col(CODE[vj], vw)],
                    T.float32(0),
                )

    return irregular_wgrad_gpu
