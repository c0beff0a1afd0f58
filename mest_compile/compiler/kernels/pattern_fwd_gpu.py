"""Pattern-scheme forward for GPUs: one work item per (image, filter, output pixel).

Same arguments as the host kernel (`pattern_fwd.py`): `f(x, values, fwd_ptr, x_off, y)`, so the
same packed `PatternFormat` drives both. A work item walks its filter's kernels pattern by pattern
(`fwd_ptr` is a CSR over `o * 8 + pattern`), reads each kernel's input channel `x_off[j]`, and
applies the pattern's 4 taps. The taps' (kh, kw) are read from two
64-bit constants (2 bits per tap, 8 patterns x 4 taps), so the loops stay uniform and scalar and a
GPU schedule only binds the block's spatial loops.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, TAPS_PER_KERNEL, index_dtype, pattern_taps


def _packed(values: list[int]) -> int:
    """2-bit fields, tap `i` at bits 2i..2i+1, as a signed int64 (arithmetic shifts keep the fields)."""
    bits = sum(v << (2 * i) for i, v in enumerate(values))
    return bits - (1 << 64) if bits >= 1 << 63 else bits


class PatternTaps:
    """TIR expressions of pattern `q`'s tap `t` (`q` may be a code whose low 3 bits are the
    pattern): its `(kh, kw)` read from two 64-bit constants, 2 bits per tap."""

    def __init__(self) -> None:
        taps = [tap for pattern in pattern_taps() for tap in pattern]
        self.kh_bits, self.kw_bits = _packed([kh for kh, _ in taps]), _packed([kw for _, kw in taps])

    @staticmethod
    def _field(bits: int, q: Any, t: Any) -> Any:
        shift = tirx.Cast("int64", (tirx.truncmod(q, NUM_PATTERNS) * TAPS_PER_KERNEL + t) * 2)
        return tirx.Cast("int32", tirx.bitwise_and(tirx.shift_right(tirx.const(bits, "int64"), shift),
                                                   tirx.const(3, "int64")))

    def kh(self, q: Any, t: Any) -> Any:
        return self._field(self.kh_bits, q, t)

    def kw(self, q: Any, t: Any) -> Any:
        return self._field(self.kw_bits, q, t)


def pattern_forward_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU forward kernel `f(x, values, fwd_ptr, x_off, y)` (unscheduled; index
    buffers of `index_dtype(geo)`)."""
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    patterns, per, taps, idx = NUM_PATTERNS, TAPS_PER_KERNEL, PatternTaps(), index_dtype(geo)

    @T.prim_func(s_tir=True)
    def pattern_fwd_gpu(x: T.handle, v: T.handle, fp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "pattern_fwd_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz, per), "float32")
        FP = T.match_buffer(fp, (O * patterns + 1,), idx)
        XO = T.match_buffer(xo, (cap,), idx)
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        for n, o, oh, ow in T.grid(N, O, OH, OW):
            with T.sblock("conv"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [n, o, oh, ow])
                T.reads(FP[vo * patterns : vo * patterns + patterns + 1], V[0:nnz, 0:per], XO[0:cap],
                        X[vn, 0:C, 0:H, 0:W])
                T.writes(Y[vn, vo, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a filter without kernels writes zeros
                for q in range(patterns):
                    # Indices are read as int32 (the buffers may be int16): loop variable and addresses stay int32.
                    for j in range(T.Cast("int32", FP[vo * patterns + q]), T.Cast("int32", FP[vo * patterns + q + 1])):
                        c = T.Cast("int32", XO[j])
                        for t in range(per):
                            row = vh * s + taps.kh(q, t) - p
                            col = vw * s + taps.kw(q, t) - p
                            inside = row >= 0 and row < H and col >= 0 and col < W
                            acc[0] = acc[0] + V[j, t] * T.if_then_else(inside, X[vn, c, row, col], T.float32(0))
                Y[vn, vo, vh, vw] = acc[0]

    return pattern_fwd_gpu
