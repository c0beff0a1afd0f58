"""The GPU input and weight gradients of schemes whose kept units are named by one code each.

Block, pattern and irregular kernels keep *units* (a 4x1 block, a 4-tap pattern kernel, a single
weight), each with `lanes` values (4, 4, 1) in a row of `values`. Their GPU gradient kernels read
unit `j`'s filter, channel and tap per lane from one int32 `code[j]` (`formats/<scheme>_gpu.py`),
so they differ only in how a code decodes: each scheme states that as a `UnitCode`, and the two
kernels here are written once.

- Input gradient `f(dy, values, ptr, units, code, dx)`: a complete block over input pixels `(n,
  c, ih, iw)`. A work item walks the units touching channel `c` (a transposed CSR: `ptr` has
  `runs` entries per channel, `units` lists unit rows) and, for each lane whose tap maps this
  pixel to an output pixel at this stride, adds `values x dy` of the lane's filter. No atomics.
- Weight gradient `f(x, dy, code, dv)`: a reduction block over kept values `(j, lane)` summing
  `dy[n, filter] * x[n, channel]` shifted by the tap over images and pixels, which the GPU
  schedule splits over a work group's threads. Its body is one store with no bound variables
  (the form TVM's cross-thread reduction needs), so every index is a `UnitCode` expression.

Both read units below `nnz` only: capacity padding is never taken for a weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


class UnitCode(Protocol):
    """How a scheme's unit code decodes (TIR expressions of `code` and `lane`; codes are non-negative)."""

    #: Values per unit (0: `values` is 1-D, one weight per unit).
    lanes: int
    #: Entries per input channel in the transposed CSR `ptr` (which then has `C * runs + 1`).
    runs: int

    def filter(self, code: Any, lane: Any) -> Any:
        """The output channel lane `lane` of the unit writes."""

    def channel(self, code: Any) -> Any:
        """The unit's input channel."""

    def kh(self, code: Any, lane: Any) -> Any:
        """The kernel row of the lane's tap."""

    def kw(self, code: Any, lane: Any) -> Any:
        """The kernel column of the lane's tap."""


@dataclass(frozen=True)
class ColumnCode:
    """Codes `row * C*KH*KW + column`: a row of the weight matrix (here a filter; a filter group for
    block's subclass) and a column `c*KH*KW + kh*KW + kw`, one weight per unit."""

    geo: ConvGeometry
    lanes: int = 0
    runs: int = 1

    def filter(self, code: Any, lane: Any) -> Any:
        return tirx.truncdiv(code, self.geo.columns)

    def channel(self, code: Any) -> Any:
        return tirx.truncdiv(tirx.truncmod(code, self.geo.columns), self.geo.kernel_h * self.geo.kernel_w)

    def kh(self, code: Any, lane: Any) -> Any:
        return tirx.truncdiv(tirx.truncmod(code, self.geo.kernel_h * self.geo.kernel_w), self.geo.kernel_w)

    def kw(self, code: Any, lane: Any) -> Any:
        return tirx.truncmod(code, self.geo.kernel_w)


def whole(buffer: tirx.Buffer) -> tirx.BufferRegion:
    """All of `buffer`, as a region (its rank differs between schemes)."""
    return buffer[tuple(slice(0, extent) for extent in buffer.shape)]


def coded_dgrad_gpu(geo: ConvGeometry, decode: UnitCode, symbol: str, index_dtype: str = "int32") -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel (unscheduled; one complete block `conv`).

    Args:
        index_dtype: the dtype of `ptr` and `units` (the scheme's packed format's; `code` is int32).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    R, L = decode.runs, max(decode.lanes, 1)
    nnz = tirx.Var("nnz", "int32")
    value_shape = (nnz, decode.lanes) if decode.lanes else (nnz,)

    def value(j: Any, lane: Any) -> tuple[Any, ...]:
        return (j, lane) if decode.lanes else (j,)

    @T.prim_func(s_tir=True)
    def dgrad(dy: T.handle, v: T.handle, ptr: T.handle, units: T.handle, code: T.handle, dx: T.handle):
        T.func_attr({"tirx.noalias": True})
        N = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, value_shape, "float32")
        PTR = T.match_buffer(ptr, (C * R + 1,), index_dtype)
        UNITS = T.match_buffer(units, (cap,), index_dtype)
        CODE = T.match_buffer(code, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, c, ih, iw in T.grid(N, C, H, W):
            with T.sblock("conv"):
                vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, ih, iw])
                T.reads(PTR[vc * R : vc * R + R + 1], UNITS[0:cap], CODE[0:cap], whole(V), DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(DX[vn, vc, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a channel without kept units gets zeros
                # Indices are read as int32 (narrower buffers too): loop variable and addresses stay int32.
                for i in range(T.Cast("int32", PTR[vc * R]), T.Cast("int32", PTR[vc * R + R])):
                    j = T.Cast("int32", UNITS[i])
                    for r in range(L):
                        th = vh + p - decode.kh(CODE[j], r)  # output row times the stride
                        tw = vw + p - decode.kw(CODE[j], r)
                        if th >= 0 and tw >= 0 and T.truncmod(th, s) == 0 and T.truncmod(tw, s) == 0:
                            if T.truncdiv(th, s) < OH and T.truncdiv(tw, s) < OW:
                                acc[0] = acc[0] + V[value(j, r)] * DY[vn, decode.filter(CODE[j], r),
                                                                      T.truncdiv(th, s), T.truncdiv(tw, s)]
                DX[vn, vc, vh, vw] = acc[0]

    return dgrad.with_attr("global_symbol", symbol)


def coded_wgrad_gpu(geo: ConvGeometry, decode: UnitCode, symbol: str) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel (unscheduled): block `conv` reduces images and pixels
    (its last three axes) for each kept value `(j, lane)`."""
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    L = max(decode.lanes, 1)
    nnz = tirx.Var("nnz", "int32")
    value_shape = (nnz, decode.lanes) if decode.lanes else (nnz,)

    def value(j: Any, lane: Any) -> tuple[Any, ...]:
        return (j, lane) if decode.lanes else (j,)

    def row(code: Any, lane: Any, oh: Any) -> Any:
        return oh * s - p + decode.kh(code, lane)

    def col(code: Any, lane: Any, ow: Any) -> Any:
        return ow * s - p + decode.kw(code, lane)

    @T.prim_func(s_tir=True)
    def wgrad(x: T.handle, dy: T.handle, code: T.handle, dv: T.handle):
        T.func_attr({"tirx.noalias": True})
        N = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DV = T.match_buffer(dv, value_shape, "float32")
        for j, r, n, oh, ow in T.grid(nnz, L, N, OH, OW):
            with T.sblock("conv"):
                vj, vr, vn, vh, vw = T.axis.remap("SSRRR", [j, r, n, oh, ow])
                T.reads(CODE[vj], X[vn, 0:C, 0:H, 0:W], DY[vn, 0:O, vh, vw])
                T.writes(DV[value(vj, vr)])
                with T.init():
                    DV[value(vj, vr)] = T.float32(0)
                DV[value(vj, vr)] = DV[value(vj, vr)] + DY[vn, decode.filter(CODE[vj], vr), vh, vw] * T.if_then_else(
                    row(CODE[vj], vr, vh) >= 0 and row(CODE[vj], vr, vh) < H and col(CODE[vj], vr, vw) >= 0
                    and col(CODE[vj], vr, vw) < W,
                    X[vn, decode.channel(CODE[vj]), row(CODE[vj], vr, vh), col(CODE[vj], vr, vw)],
                    T.float32(0),
                )

    return wgrad.with_attr("global_symbol", symbol)
