"""Pattern-scheme weight gradient restricted to the mask: 4 values per kept kernel, nothing else.

`dv[j, t] = sum over images and output pixels of dy[n, o, oh, ow] * x_scratch[x_off[j] + d_t + ...]`
for kept kernel `j` of filter `o` with tap offsets `d_t` of its pattern. Images are split over
`slots` (one per thread). A slot fills the input scratch of one image (or a few) at a time and,
per filter and pattern, runs `cols`-kernel micro-kernels with the pattern's taps as constants:
per output row one `dy` row feeds `4 * cols` vector FMAs into a `cols x 4 x OW` register tile,
and unrolling `rows` output rows lets taps in one kernel column share scratch rows. The tile is
added into the slot's lane-wise partial sums once per step; a final block reduces slots and
lanes.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS
from mest_compile.compiler.kernels.fill import make_fill
from mest_compile.compiler.kernels.pattern_taps import InputLayout, chain, forward_tap_offsets, input_layout


def _pattern_loop(p: int, offsets: list[int], geo: ConvGeometry, pitch: int, cols: int, rows: int, slots: int, images: int):
    """Maker of the macro accumulating pattern `p`'s kernels of filter `o` over one step's images."""
    d0, d1, d2, d3 = offsets
    OH, OW, PITCH = geo.out_h, geo.out_w, pitch
    TILES = OH // rows

    def make(prev):
        first = prev is None

        @T.macro
        def run(acc, PART, S, DY, FP, XO, N, vt, m, o):
            if not first:
                prev(acc, PART, S, DY, FP, XO, N, vt, m, o)
            lo = FP[o * NUM_PATTERNS + p]
            cnt = FP[o * NUM_PATTERNS + p + 1] - lo
            for cb in range((cnt + cols - 1) // cols):
                for jj, tap in T.grid(cols, 4):
                    for w in T.vectorized(OW):
                        acc[jj, tap, w] = T.float32(0)
                if cb * cols + cols <= cnt:
                    for u, ot in T.grid(images, TILES):
                        if vt + (m * images + u) * slots < N:
                            for i in T.unroll(rows):
                                for jj in T.unroll(cols):
                                    for w in T.vectorized(OW):
                                        acc[jj, 0, w] = acc[jj, 0, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jj] + d0 + (ot * rows + i) * PITCH + w]
                                        acc[jj, 1, w] = acc[jj, 1, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jj] + d1 + (ot * rows + i) * PITCH + w]
                                        acc[jj, 2, w] = acc[jj, 2, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jj] + d2 + (ot * rows + i) * PITCH + w]
                                        acc[jj, 3, w] = acc[jj, 3, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jj] + d3 + (ot * rows + i) * PITCH + w]
                    for jj, tap in T.grid(cols, 4):
                        for w in T.vectorized(OW):
                            PART[vt, lo + cb * cols + jj, tap, w] = PART[vt, lo + cb * cols + jj, tap, w] + acc[jj, tap, w]
                else:
                    # The run's last kernels (fewer than `cols`): one at a time.
                    for jr in range(cnt - cb * cols):
                        for u, ot in T.grid(images, TILES):
                            if vt + (m * images + u) * slots < N:
                                for i in T.unroll(rows):
                                    for w in T.vectorized(OW):
                                        acc[0, 0, w] = acc[0, 0, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jr] + d0 + (ot * rows + i) * PITCH + w]
                                        acc[0, 1, w] = acc[0, 1, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jr] + d1 + (ot * rows + i) * PITCH + w]
                                        acc[0, 2, w] = acc[0, 2, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jr] + d2 + (ot * rows + i) * PITCH + w]
                                        acc[0, 3, w] = acc[0, 3, w] + DY[vt + (m * images + u) * slots, o, ot * rows + i, w] * S[
                                            u, XO[lo + cb * cols + jr] + d3 + (ot * rows + i) * PITCH + w]
                        for tap in T.unroll(4):
                            for w in T.vectorized(OW):
                                PART[vt, lo + cb * cols + jr, tap, w] = PART[vt, lo + cb * cols + jr, tap, w] + acc[0, tap, w]
                                acc[0, tap, w] = T.float32(0)

        return run

    return make


def pattern_wgrad(
    geo: ConvGeometry, cols: int, rows: int, slots: int, images: int = 1, layout: InputLayout | None = None
) -> tirx.PrimFunc:
    """TIR of the weight-gradient kernel `f(x, dy, fwd_ptr, x_off, dv)`.

    Args:
        geo: the layer (3x3; batch, nnz and capacity symbolic).
        cols: kept kernels per micro-kernel (register tile `cols x 4 x OW`).
        rows: output rows unrolled per micro-kernel step (must divide `out_h`).
        slots: parallel image slots (the number of threads).
        images: images a slot accumulates in registers before adding to its partial sums.
        layout: the input scratch (default `input_layout(geo)`); the format's `x_off` must match.

    Buffers: `x (N, C, H, W)`, `dy (N, O, OH, OW)`, `fwd_ptr`, `x_off` as in the forward,
    `dv (nnz, 4)` (written; row `j` is kernel `j`'s 4 tap gradients).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    layout = layout or input_layout(geo)
    P, XR, PITCH = layout.size, layout.rows, layout.pitch
    assert OH % rows == 0, (OH, rows)
    FPN = O * NUM_PATTERNS + 1
    fill = make_fill(C, H, W, s, p, p, XR, layout.phase_w)
    runs = chain([_pattern_loop(q, offs, geo, PITCH, cols, rows, slots, images) for q, offs in enumerate(forward_tap_offsets(layout))])

    @T.prim_func(s_tir=True)
    def pattern_wgrad(x: T.handle, dy: T.handle, fp: T.handle, xo: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "pattern_wgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        FP = T.match_buffer(fp, (FPN,), "int32")
        XO = T.match_buffer(xo, (cap,), "int32")
        DV = T.match_buffer(dv, (nnz, 4), "float32")
        PART = T.sblock_alloc_buffer((slots, nnz, 4, OW), "float32")
        for t in range(slots):
            with T.sblock("wgrad"):
                vt = T.axis.spatial(slots, t)
                T.reads(X[0:N, 0:C, 0:H, 0:W], DY[0:N, 0:O, 0:OH, 0:OW], FP[0:FPN], XO[0:cap])
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
                    for o in range(O):
                        runs(acc, PART, S, DY, FP, XO, N, vt, m, o)
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

    return pattern_wgrad
