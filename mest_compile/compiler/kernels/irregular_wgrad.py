"""Irregular weight gradient restricted to the mask: one value per kept weight, nothing else.

`dv[j] = sum over images and output pixels of dy[n, o, oh, ow] * x_scratch[x_off[j] + ...]` for
nonzero `j` of filter `o`: a sampled reduction (one dot product of length N*OH*OW per kept
weight), never a dense weight gradient. Images are split over `slots` (one per thread). A slot
fills the input scratch of one image at a time and walks it one *channel block* at a time:
for every filter, the segment of its nonzeros in that block. A block's scratch planes stay in
L1 across all filters, so only `dy` rows come from L2 (each nonzero would otherwise stream its
scratch rows from L2, the limit measured first). A segment runs `cols`-nonzero micro-kernels:
one `dy` row and `cols` scratch rows loaded per output row feed `cols` vector FMAs into a
register tile (`(1 + cols) / cols` loads per FMA), added into the slot's lane-wise partial sums
once per `images` images; the segment's last `< cols` nonzeros run one at a time with `chains`
independent accumulators over interleaved rows. A final block reduces slots and lanes.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import make_fill


def irregular_wgrad(geo: ConvGeometry, cols: int, slots: int, images: int, channel_block: int) -> tirx.PrimFunc:
    """TIR of the weight-gradient kernel `f(x, dy, seg_ptr, x_off, dv)`.

    Args:
        geo: the layer (batch, nnz and capacity symbolic).
        cols: nonzeros per micro-kernel (register tile `cols x OW`).
        slots: parallel image slots (the number of threads).
        images: images a slot accumulates in registers before adding to its partial sums (small
            outputs have few rows per image, so the per-image read-modify-write would dominate).
        channel_block: input channels per block; the format must be packed with the same value.

    Buffers: `x (N, C, H, W)`, `dy (N, O, OH, OW)`, `seg_ptr (O * (blocks + 1),) int32`, `x_off`
    as in the forward, `dv (nnz,)` (written; entry `j` is nonzero `j`'s gradient).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    P, XR, PITCH = geo.x_size, geo.x_rows, geo.x_pitch
    B = -(-C // channel_block)
    # Independent accumulators of a single nonzero: interleaved output rows (must divide OH).
    chains = max(d for d in range(1, cols + 1) if OH % d == 0)
    fill = make_fill(C, H, W, s, p, p, XR, geo.x_phase_w)

    @T.prim_func(s_tir=True)
    def irregular_wgrad(x: T.handle, dy: T.handle, sp: T.handle, xo: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "irregular_wgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        SP = T.match_buffer(sp, (O * (B + 1),), "int32")
        XO = T.match_buffer(xo, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz,), "float32")
        PART = T.sblock_alloc_buffer((slots, nnz, OW), "float32")
        for t in range(slots):
            with T.sblock("wgrad"):
                vt = T.axis.spatial(slots, t)
                T.reads(X[0:N, 0:C, 0:H, 0:W], DY[0:N, 0:O, 0:OH, 0:OW], SP[0 : O * (B + 1)], XO[0:cap])
                T.writes(PART[vt, 0:nnz, 0:OW])
                S = T.sblock_alloc_buffer((images, P), "float32")
                acc = T.sblock_alloc_buffer((cols, OW), "float32", scope="local")
                for j in range(nnz):
                    for w in T.vectorized(OW):
                        PART[vt, j, w] = T.float32(0)
                # Slot vt takes images vt, vt + slots, ...; `images` of them per step.
                for m in range(((N - vt + slots - 1) // slots + images - 1) // images):
                    for u, q in T.grid(images, s * C):
                        if vt + (m * images + u) * slots < N:
                            fill(S, u, q * XR * PITCH, X, vt + (m * images + u) * slots, q)
                    for b, o in T.grid(B, O):
                        for cb in range((SP[o * (B + 1) + b + 1] - SP[o * (B + 1) + b]) // cols):
                            for jj in T.unroll(cols):
                                for w in T.vectorized(OW):
                                    acc[jj, w] = T.float32(0)
                            for u, oh in T.grid(images, OH):
                                if vt + (m * images + u) * slots < N:
                                    for jj in T.unroll(cols):
                                        for w in T.vectorized(OW):
                                            acc[jj, w] = acc[jj, w] + DY[vt + (m * images + u) * slots, o, oh, w] * S[
                                                u, XO[SP[o * (B + 1) + b] + cb * cols + jj] + oh * PITCH + w
                                            ]
                            for jj in T.unroll(cols):
                                for w in T.vectorized(OW):
                                    PART[vt, SP[o * (B + 1) + b] + cb * cols + jj, w] = (
                                        PART[vt, SP[o * (B + 1) + b] + cb * cols + jj, w] + acc[jj, w]
                                    )
                        for j in range(
                            SP[o * (B + 1) + b] + (SP[o * (B + 1) + b + 1] - SP[o * (B + 1) + b]) // cols * cols,
                            SP[o * (B + 1) + b + 1],
                        ):
                            for jj in T.unroll(chains):
                                for w in T.vectorized(OW):
                                    acc[jj, w] = T.float32(0)
                            for u, oh in T.grid(images, OH // chains):
                                if vt + (m * images + u) * slots < N:
                                    for jj in T.unroll(chains):
                                        for w in T.vectorized(OW):
                                            acc[jj, w] = acc[jj, w] + DY[vt + (m * images + u) * slots, o, oh * chains + jj, w] * S[
                                                u, XO[j] + (oh * chains + jj) * PITCH + w
                                            ]
                            for jj in T.unroll(chains):
                                for w in T.vectorized(OW):
                                    PART[vt, j, w] = PART[vt, j, w] + acc[jj, w]
        for j in range(nnz):
            with T.sblock("reduce"):
                vj = T.axis.spatial(nnz, j)
                T.reads(PART[0:slots, vj, 0:OW])
                T.writes(DV[vj])
                tot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                tot[0] = T.float32(0)
                for u, w in T.grid(slots, OW):
                    tot[0] = tot[0] + PART[u, vj, w]
                DV[vj] = tot[0]

    return irregular_wgrad
