"""Irregular-scheme forward for GPUs: one work item per (image, filter, output pixel).

Same arguments as the host kernel (`irregular_fwd.py`): `f(x, values, row_ptr, x_off, y)`, so the
same packed `IrregularFormat` drives both. As in `block_fwd_gpu.py`, each work item decodes the
host scratch offset of a nonzero back into an input coordinate and reads `x` directly (a bounds
test stands in for the padding); every loop inside the block is scalar, so a GPU schedule only
binds the block's spatial loops.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


def irregular_forward_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU forward kernel `f(x, values, row_ptr, x_off, y)` (unscheduled).

    Buffers as in `irregular_forward`: `x (N, C, H, W)`, `values (nnz,)`, `row_ptr (O + 1,)`,
    `x_off (cap,)`, `y (N, O, OH, OW)`; batch, nnz and cap stay symbolic.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    PITCH, PW = geo.x_pitch, geo.x_phase_w
    PLANE = geo.x_rows * PITCH

    @T.prim_func(s_tir=True)
    def irregular_fwd_gpu(x: T.handle, v: T.handle, rp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "irregular_fwd_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz,), "float32")
        RP = T.match_buffer(rp, (O + 1,), "int32")
        XO = T.match_buffer(xo, (cap,), "int32")
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        for n, o, oh, ow in T.grid(N, O, OH, OW):
            with T.sblock("conv"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [n, o, oh, ow])
                T.reads(RP[vo : vo + 2], V[0:nnz], XO[0:cap], X[vn, 0:C, 0:H, 0:W])
                T.writes(Y[vn, vo, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a pruned filter writes zeros
                for j in range(RP[vo], RP[vo + 1]):
                    # The host scratch offset -> input coordinate (offsets are non-negative).
                    at = XO[j] + vh * PITCH + vw
                    plane = T.truncdiv(at, PLANE)
                    lane = T.truncmod(at, PITCH)
                    row = s * T.truncdiv(T.truncmod(at, PLANE), PITCH) + T.truncdiv(plane, C) - p
                    col = s * T.truncmod(lane, PW) + T.truncdiv(lane, PW) - p
                    inside = row >= 0 and row < H and col >= 0 and col < W
                    acc[0] = acc[0] + V[j] * T.if_then_else(inside, X[vn, T.truncmod(plane, C), row, col], T.float32(0))
                Y[vn, vo, vh, vw] = acc[0]

    return irregular_fwd_gpu
