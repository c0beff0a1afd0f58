"""Channel-scheme weight gradient: `dW[kept] = correlate(x, dy[:, kept])`, nothing for pruned filters.

`dv[j, c, kh, kw] = sum over images and output pixels of dy[n, kept[j], oh, ow] * x_scratch[...]`:
one value per kept weight (the dense gradient is never formed). Input channels are split over
`slots` (one per thread), so every weight has one owner and the kernel is a single parallel
region with no cross-thread reduction. A slot fills the input scratch of its channels for
`images` images at a time (it stays in L2) and, per balanced tile of `f` kept filters and per
`(c, kh rows)`, runs a register tile of `f x kh_rows x kw x OW`: per output row, `f` dy vectors
and `kh_rows * kw` scratch vectors feed `f * kh_rows * kw` vector FMAs. The tile is added into
the slot's lane-wise partial sums once per step; at the end the slot sums its lanes into `dv`.

Splitting images over slots instead needed a second parallel region for the cross-slot sum;
on this shared 2-core machine the second wake-up of TVM's worker made the kernel's median time
2-3x its best time whenever another process held the other core.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.channel_tiles import filter_tiles
from mest_compile.compiler.kernels.fill import make_fill


def lane_sum(width: int):
    """A macro `lanes(tot)` leaving `sum(tot[0:width])` in `tot[0]`: log2(width) vector halvings."""
    widths = []
    while width > 1:
        widths.append(width)
        width -= width // 2
    step = None
    for w in reversed(widths):  # the chain is built innermost (narrowest) first
        step = _halve(w, step)
    if step is None:

        @T.macro
        def noop(tot):
            T.evaluate(0)

        return noop
    return step


def _halve(width: int, rest):
    half = width // 2
    has_rest = rest is not None

    @T.macro
    def halve(tot):
        for w in T.vectorized(half):
            tot[w] = tot[w] + tot[w + width - half]
        if has_rest:
            rest(tot)

    return halve


def channel_wgrad(geo: ConvGeometry, filters: int, slots: int, images: int = 1, kh_rows: int = 1) -> tirx.PrimFunc:
    """TIR of the weight-gradient kernel `f(x, dy, kept, dv)`.

    Args:
        geo: the layer (batch, kept count and capacity symbolic).
        filters: largest filter tile (register tile `filters x kh_rows x kw x OW`).
        slots: parallel channel slots (the number of threads).
        images: images a slot accumulates in registers before adding to its partial sums.
        kh_rows: kernel rows per register tile (must divide kh); more rows reuse each dy load.

    Buffers: `x (N, C, H, W)`, `dy (N, O, OH, OW)`, `kept (cap,) int32`,
    `dv (nnz, C, kh, kw)` (written; row `j` is the gradient of packed filter `j`).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    KH, KW = geo.kernel_h, geo.kernel_w
    XR, PITCH, PW = geo.x_rows, geo.x_pitch, geo.x_phase_w
    assert KH % kh_rows == 0, (KH, kh_rows)
    CC = -(-C // slots)  # input channels per slot (the last slot may have fewer)
    PLANE = XR * PITCH
    # A slot's scratch per image: plane (a, cl) holds row phase a of its channel cl.
    SP = s * CC * PLANE
    fill = make_fill(C, H, W, s, p, p, XR, PW)

    def make_body(f: int):
        @T.macro
        def body(S, DY, PART, KEPT, acc, vt, m, j0):
            for cl, kt in T.grid(CC, KH // kh_rows):
                if vt * CC + cl < C:
                    for a in T.unroll(f):
                        for hh in T.unroll(kh_rows):
                            for kw in T.unroll(KW):
                                for w in T.vectorized(OW):
                                    acc[a, hh, kw, w] = T.float32(0)
                    for u, oh in T.grid(images, OH):
                        if m * images + u < DY.shape[0]:
                            for a in T.unroll(f):
                                for hh in T.unroll(kh_rows):
                                    for kw in T.unroll(KW):
                                        for w in T.vectorized(OW):
                                            acc[a, hh, kw, w] = acc[a, hh, kw, w] + DY[m * images + u, KEPT[j0 + a], oh, w] * S[
                                                u,
                                                ((((kt * kh_rows + hh) % s) * CC + cl) * XR + (kt * kh_rows + hh) // s + oh) * PITCH
                                                + (kw % s) * PW + kw // s + w,
                                            ]
                    for a in T.unroll(f):
                        for hh in T.unroll(kh_rows):
                            for kw in T.unroll(KW):
                                for w in T.vectorized(OW):
                                    PART[j0 + a, cl, kt * kh_rows + hh, kw, w] = PART[j0 + a, cl, kt * kh_rows + hh, kw, w] + acc[a, hh, kw, w]

        return body

    tiles = filter_tiles(filters, make_body)
    lanes = lane_sum(OW)

    @T.prim_func(s_tir=True)
    def channel_wgrad(x: T.handle, dy: T.handle, kp: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "channel_wgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        KEPT = T.match_buffer(kp, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz, C, KH, KW), "float32")
        for t in range(slots):
            with T.sblock("wgrad"):
                vt = T.axis.spatial(slots, t)
                T.reads(X[0:N, 0:C, 0:H, 0:W], DY[0:N, 0:O, 0:OH, 0:OW], KEPT[0:cap])
                T.writes(DV[0:nnz, vt * CC : T.min(C, vt * CC + CC), 0:KH, 0:KW])
                S = T.sblock_alloc_buffer((images, SP), "float32")
                PART = T.sblock_alloc_buffer((nnz, CC, KH, KW, OW), "float32")
                acc = T.sblock_alloc_buffer((filters, kh_rows, KW, OW), "float32", scope="local")
                tot = T.sblock_alloc_buffer((OW,), "float32", scope="local")
                # PART is read and written outside the image loop too, so it lives for the whole
                # block (a buffer touched only inside a loop is re-allocated per iteration).
                for j, cl, kh, kw in T.grid(nnz, CC, KH, KW):
                    for w in T.vectorized(OW):
                        PART[j, cl, kh, kw, w] = T.float32(0)
                for m in range((N + images - 1) // images):
                    for u, a, cl in T.grid(images, s, CC):
                        if m * images + u < N and vt * CC + cl < C:
                            fill(S, u, (a * CC + cl) * PLANE, X, m * images + u, a * C + vt * CC + cl)
                    tiles(S, DY, PART, KEPT, acc, vt, m, nnz)
                # Lanes summed by halving (a scalar loop over lanes is one chain of dependent adds).
                for j, cl, kh, kw in T.grid(nnz, CC, KH, KW):
                    if vt * CC + cl < C:
                        for w in T.vectorized(OW):
                            tot[w] = PART[j, cl, kh, kw, w]
                        lanes(tot)
                        DV[j, vt * CC + cl, kh, kw] = tot[0]

    return channel_wgrad
