"""Pattern-scheme input and weight gradients for GPUs.

Both read kept kernel `j`'s filter, channel and pattern from one code, `code[j] = (o * C + c) * 8
+ pattern` (`formats/pattern_gpu.py`), and each tap's `(kh, kw)` from the forward's two packed
64-bit constants (`pattern_fwd_gpu.py`), indexed by `pattern * 4 + tap`: the loops stay uniform
and no per-pattern code is generated.

- Input gradient `f(dy, values, dx_ptr, dx_ker, code, dx)`: a work item per input pixel `(n, c,
  ih, iw)` walks the kept kernels of channel `c` (the format's transposed CSR, `dx_ptr` over `c *
  8 + pattern`, so channel `c`'s kernels are one run) and adds, for each of a kernel's 4 taps that
  maps this pixel to an output pixel at this stride, `values x dy` of the kernel's filter.
- Weight gradient `f(x, dy, code, dv)`: a reduction block over kept values `(j, t)` that sums
  `dy[n, o] * x[n, c]` shifted by the tap over the batch and the output pixels, which the GPU
  schedule splits over a work group's threads: the gradient is computed for kept weights only.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, TAPS_PER_KERNEL, pattern_taps
from mest_compile.compiler.kernels.pattern_fwd_gpu import _packed

PER = TAPS_PER_KERNEL


class _Taps:
    """TIR expressions of kernel `code`'s tap `t`: its `(kh, kw)` decoded from the packed constants."""

    def __init__(self) -> None:
        taps = [tap for pattern in pattern_taps() for tap in pattern]
        self.kh_bits, self.kw_bits = _packed([kh for kh, _ in taps]), _packed([kw for _, kw in taps])

    @staticmethod
    def _field(bits: int, code: Any, t: Any) -> Any:
        shift = tirx.Cast("int64", (tirx.truncmod(code, NUM_PATTERNS) * PER + t) * 2)
        field = tirx.bitwise_and(tirx.shift_right(tirx.const(bits, "int64"), shift), tirx.const(3, "int64"))
        return tirx.Cast("int32", field)

    def kh(self, code: Any, t: Any) -> Any:
        return self._field(self.kh_bits, code, t)

    def kw(self, code: Any, t: Any) -> Any:
        return self._field(self.kw_bits, code, t)


def pattern_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel (unscheduled; one complete block `conv`)."""
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    P, taps = NUM_PATTERNS, _Taps()

    @T.prim_func(s_tir=True)
    def pattern_dgrad_gpu(dy: T.handle, v: T.handle, dp: T.handle, dk: T.handle, code: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "pattern_dgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, PER), "float32")
        DP = T.match_buffer(dp, (C * P + 1,), "int32")
        DK = T.match_buffer(dk, (cap,), "int32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        for n, c, ih, iw in T.grid(N, C, H, W):
            with T.sblock("conv"):
                vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, ih, iw])
                T.reads(DP[vc * P : vc * P + P + 1], DK[0:cap], CODE[0:cap], V[0:nnz, 0:PER], DY[vn, 0:O, 0:OH, 0:OW])
                T.writes(DX[vn, vc, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a channel without kept kernels gets zeros
                for i in range(DP[vc * P], DP[vc * P + P]):  # every pattern's run of channel c
                    j = DK[i]
                    o = T.truncdiv(CODE[j], C * P)
                    for t in range(PER):
                        th = vh + p - taps.kh(CODE[j], t)  # output row times the stride
                        tw = vw + p - taps.kw(CODE[j], t)
                        if th >= 0 and tw >= 0 and T.truncmod(th, s) == 0 and T.truncmod(tw, s) == 0:
                            if T.truncdiv(th, s) < OH and T.truncdiv(tw, s) < OW:
                                acc[0] = acc[0] + V[j, t] * DY[vn, o, T.truncdiv(th, s), T.truncdiv(tw, s)]
                DX[vn, vc, vh, vw] = acc[0]

    return pattern_dgrad_gpu


def pattern_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel (unscheduled): block `conv` reduces images and pixels
    (its last three axes) for each kept value `(j, t)`.

    The body is one store with no bound variables (the form TVM's cross-thread reduction needs),
    so the kernel's filter, channel and tap are expressions of `code[j]` written inline.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    P, taps = NUM_PATTERNS, _Taps()

    def row(code: Any, t: Any, oh: Any) -> Any:
        return oh * s - p + taps.kh(code, t)

    def col(code: Any, t: Any, ow: Any) -> Any:
        return ow * s - p + taps.kw(code, t)

    @T.prim_func(s_tir=True)
    def pattern_wgrad_gpu(x: T.handle, dy: T.handle, code: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "pattern_wgrad_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        CODE = T.match_buffer(code, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz, PER), "float32")
        for j, t, n, oh, ow in T.grid(nnz, PER, N, OH, OW):
            with T.sblock("conv"):
                vj, vt, vn, vh, vw = T.axis.remap("SSRRR", [j, t, n, oh, ow])
                T.reads(CODE[vj], X[vn, 0:C, 0:H, 0:W], DY[vn, 0:O, vh, vw])
                T.writes(DV[vj, vt])
                with T.init():
                    DV[vj, vt] = T.float32(0)
                DV[vj, vt] = DV[vj, vt] + DY[vn, T.truncdiv(CODE[vj], C * P), vh, vw] * T.if_then_else(
                    row(CODE[vj], vt, vh) >= 0 and row(CODE[vj], vt, vh) < H and col(CODE[vj], vt, vw) >= 0
                    and col(CODE[vj], vt, vw) < W,
                    X[vn, T.truncmod(T.truncdiv(CODE[vj], P), C), row(CODE[vj], vt, vh), col(CODE[vj], vt, vw)],
                    T.float32(0),
                )

    return pattern_wgrad_gpu
