"""Block-scheme weight gradient restricted to the mask: one value per kept weight, nothing else.

`dv[j, r] = sum over images and output pixels of dy[n, 4g + r, oh, ow] * x_scratch[x_off[j] + ...]`
for kept block `j` of group `g`. Images are split over `slots` (one per thread). A slot fills
the input scratch of one image at a time (it stays in L2) and, per group, runs `cols`-column
micro-kernels: 4 `dy` rows and `cols` scratch rows loaded per output row feed `4 * cols`
vector FMAs into a register tile, which is added into the slot's lane-wise partial sums once
per image. A final block reduces slots and lanes.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.block import block_index_dtype
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.fill import make_fill
from mest_compile.compiler.kernels.indices import index_reader


def block_wgrad(geo: ConvGeometry, cols: int, slots: int, images: int = 1) -> tirx.PrimFunc:
    """TIR of the weight-gradient kernel `f(x, dy, group_ptr, x_off, dv)`.

    Args:
        geo: the layer (batch, nnz and capacity symbolic).
        cols: kept columns per micro-kernel (register tile `cols x 4 x OW`).
        slots: parallel image slots (the number of threads).
        images: images a slot accumulates in registers before adding to its partial sums (small
            outputs have few rows per image, so the per-image read-modify-write would dominate).

    Buffers: `x (N, C, H, W)`, `dy (N, O, OH, OW)`, `group_ptr`, `x_off` as in the forward,
    `dv (nnz, 4)` (written; entry `j` is block `j`'s 4 gradient values).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    G, P, XR, PITCH = O // 4, geo.x_size, geo.x_rows, geo.x_pitch
    fill = make_fill(C, H, W, s, p, p, XR, geo.x_phase_w)
    IDX, ix = index_reader(block_index_dtype(geo))  # the format's compact per-block indices

    @T.prim_func(s_tir=True)
    def block_wgrad(x: T.handle, dy: T.handle, gp: T.handle, xo: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "block_wgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        GP = T.match_buffer(gp, (G + 1,), "int32")
        XO = T.match_buffer(xo, (cap,), IDX)
        DV = T.match_buffer(dv, (nnz, 4), "float32")
        PART = T.sblock_alloc_buffer((slots, nnz, 4, OW), "float32")
        for t in range(slots):
            with T.sblock("wgrad"):
                vt = T.axis.spatial(slots, t)
                T.reads(X[0:N, 0:C, 0:H, 0:W], DY[0:N, 0:O, 0:OH, 0:OW], GP[0 : G + 1], XO[0:cap])
                T.writes(PART[vt, 0:nnz, 0:4, 0:OW])
                S = T.sblock_alloc_buffer((images, P), "float32")
                acc = T.sblock_alloc_buffer((cols, 4, OW), "float32", scope="local")
                for j, r in T.grid(nnz, 4):
                    for w in T.vectorized(OW):
                        PART[vt, j, r, w] = T.float32(0)
                # Slot vt takes images vt, vt + slots, ...; `images` of them per step.
                for m in range(((N - vt + slots - 1) // slots + images - 1) // images):
                    for u, q in T.grid(images, s * C):
                        if vt + (m * images + u) * slots < N:
                            fill(S, u, q * XR * PITCH, X, vt + (m * images + u) * slots, q)
                    for g in range(G):
                        for cb in range((GP[g + 1] - GP[g]) // cols):
                            for jj in T.unroll(cols):
                                for r in T.unroll(4):
                                    for w in T.vectorized(OW):
                                        acc[jj, r, w] = T.float32(0)
                            for u, oh in T.grid(images, OH):
                                if vt + (m * images + u) * slots < N:
                                    for jj in T.unroll(cols):
                                        for r in T.unroll(4):
                                            for w in T.vectorized(OW):
                                                acc[jj, r, w] = acc[jj, r, w] + DY[vt + (m * images + u) * slots, g * 4 + r, oh, w] * S[
                                                    u, ix(XO[GP[g] + cb * cols + jj]) + oh * PITCH + w
                                                ]
                            for jj in T.unroll(cols):
                                for r in T.unroll(4):
                                    for w in T.vectorized(OW):
                                        PART[vt, GP[g] + cb * cols + jj, r, w] = PART[vt, GP[g] + cb * cols + jj, r, w] + acc[jj, r, w]
                        for j in range(GP[g] + (GP[g + 1] - GP[g]) // cols * cols, GP[g + 1]):
                            for r in T.unroll(4):
                                for w in T.vectorized(OW):
                                    acc[0, r, w] = T.float32(0)
                            for u, oh in T.grid(images, OH):
                                if vt + (m * images + u) * slots < N:
                                    for r in T.unroll(4):
                                        for w in T.vectorized(OW):
                                            acc[0, r, w] = acc[0, r, w] + DY[vt + (m * images + u) * slots, g * 4 + r, oh, w] * S[u, ix(XO[j]) + oh * PITCH + w]
                            for r in T.unroll(4):
                                for w in T.vectorized(OW):
                                    PART[vt, j, r, w] = PART[vt, j, r, w] + acc[0, r, w]
        for j, r in T.grid(nnz, 4):
            with T.sblock("reduce"):
                vj, vr = T.axis.remap("SS", [j, r])
                T.reads(PART[0:slots, vj, vr, 0:OW])
                T.writes(DV[vj, vr])
                tot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                tot[0] = T.float32(0)
                for u, w in T.grid(slots, OW):
                    tot[0] = tot[0] + PART[u, vj, vr, w]
                DV[vj, vr] = tot[0]

    return block_wgrad
