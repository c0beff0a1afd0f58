"""Channel-scheme forward for GPUs: one work item per (image, filter, output pixel).

Same arguments as the host kernel (`channel_fwd.py`): `f(x, values, kept, slot, y)`, so the same
packed `ChannelFormat` drives both. A pruned filter (`slot[o] < 0`) writes zeros; a kept one is a
plain dense dot product over (KH, KW, C), taps outermost so the bounds test standing in for the
padding runs once per tap and skips the taps that fall outside. Every loop inside the block is
scalar: a GPU schedule only binds the block's spatial loops.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry


def channel_forward_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU forward kernel `f(x, values, kept, slot, y)` (unscheduled).

    Buffers as in `channel_forward`: `x (N, C, H, W)`, `values (nnz, C, KH, KW)` (the kept
    filters), `kept (cap,)`, `slot (O,)`, `y (N, O, OH, OW)`; batch, nnz and cap stay symbolic.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    KH, KW, OH, OW, s, p = geo.kernel_h, geo.kernel_w, geo.out_h, geo.out_w, geo.stride, geo.padding

    @T.prim_func(s_tir=True)
    def channel_fwd_gpu(x: T.handle, v: T.handle, kp: T.handle, sl: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "channel_fwd_gpu", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz, C, KH, KW), "float32")
        KEPT = T.match_buffer(kp, (cap,), "int32")
        SLOT = T.match_buffer(sl, (O,), "int32")
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        for n, o, oh, ow in T.grid(N, O, OH, OW):
            with T.sblock("conv"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [n, o, oh, ow])
                T.reads(SLOT[vo], V[0:nnz, 0:C, 0:KH, 0:KW], X[vn, 0:C, 0:H, 0:W], KEPT[0:cap])
                T.writes(Y[vn, vo, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a pruned filter writes zeros
                j = SLOT[vo]
                if j >= 0:
                    # Taps outermost: each tap's bounds test runs once, not once per input channel.
                    for kh in range(KH):
                        row = vh * s + kh - p
                        if row >= 0 and row < H:
                            for kw in range(KW):
                                col = vw * s + kw - p
                                if col >= 0 and col < W:
                                    for c in range(C):
                                        acc[0] = acc[0] + V[j, c, kh, kw] * X[vn, c, row, col]
                Y[vn, vo, vh, vw] = acc[0]

    return channel_fwd_gpu
