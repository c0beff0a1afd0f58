"""Block-scheme forward for GPUs: one work item per (image, filter group, output pixel).

Same arguments as the host kernel (`block_fwd.py`): `f(x, values, group_ptr, x_off, y)`, so the
same packed `BlockFormat` drives both. The host kernel reads a zero-padded, phase-split input
scratch built by a vectorised fill stage; a GPU has no use for that stage (and TVM cannot emit its
16- and 32-lane vectors for CUDA or OpenCL), so each work item decodes the scratch offset
`x_off[j] + oh * pitch + ow` back into an input coordinate and reads `x` directly, with a bounds
test standing in for the padding. Every loop inside the block is scalar: a GPU schedule only has
to bind the block's spatial loops.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.block import block_index_dtype
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.indices import index_reader


def block_forward_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU forward kernel `f(x, values, group_ptr, x_off, y)` (unscheduled).

    Buffers as in `block_forward`: `x (N, C, H, W)`, `values (nnz, 4)`, `group_ptr (O/4 + 1,)`,
    `x_off (cap,)`, `y (N, O, OH, OW)`; batch, nnz and cap stay symbolic.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    G, XR, PITCH, PW = O // 4, geo.x_rows, geo.x_pitch, geo.x_phase_w
    PLANE = XR * PITCH
    IDX, ix = index_reader(block_index_dtype(geo))  # the format's compact per-block indices

    @T.prim_func(s_tir=True)
    def block_fwd_gpu(x: T.handle, v: T.handle, gp: T.handle, xo: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "block_fwd_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        GP = T.match_buffer(gp, (G + 1,), "int32")
        XO = T.match_buffer(xo, (cap,), IDX)
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        for n, g, oh, ow in T.grid(N, G, OH, OW):
            with T.sblock("conv"):
                vn, vg, vh, vw = T.axis.remap("SSSS", [n, g, oh, ow])
                T.reads(GP[vg : vg + 2], V[0:nnz, 0:4], XO[0:cap], X[vn, 0:C, 0:H, 0:W])
                T.writes(Y[vn, vg * 4 : vg * 4 + 4, vh, vw])
                acc = T.sblock_alloc_buffer((4,), "float32", scope="local")
                for r in range(4):
                    acc[r] = T.float32(0)  # explicit: a group without kept blocks writes zeros
                for j in range(GP[vg], GP[vg + 1]):
                    # Offsets are non-negative: truncating division avoids floor-division fix-ups.
                    at = ix(XO[j]) + vh * PITCH + vw
                    plane = T.truncdiv(at, PLANE)
                    lane = T.truncmod(at, PITCH)
                    row = s * T.truncdiv(T.truncmod(at, PLANE), PITCH) + T.truncdiv(plane, C) - p
                    col = s * T.truncmod(lane, PW) + T.truncdiv(lane, PW) - p
                    inside = row >= 0 and row < H and col >= 0 and col < W
                    value = T.if_then_else(inside, X[vn, T.truncmod(plane, C), row, col], T.float32(0))
                    for r in range(4):
                        acc[r] = acc[r] + V[j, r] * value
                for r in range(4):
                    Y[vn, vg * 4 + r, vh, vw] = acc[r]

    return block_fwd_gpu
