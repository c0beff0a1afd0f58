"""Pattern-scheme weight gradient restricted to the mask: 4 values per kept kernel, nothing else.

`dv[j, t] = sum over images and output pixels of dy[n, o, oh, ow] * x_scratch[c * plane + d_t + ...]`
for kept kernel `j = (o, c)` with tap offsets `d_t` of its pattern. The kernels are visited in
the input-gradient order, by input channel and pattern (`dx_ptr`, `dx_ker`): all kernels of
one `(c, pattern)` read the *same* 4 input rows per output row and differ only in their filter's
`dy` row. A micro-kernel takes `width` of them at once, so per output row it loads 4 input
vectors and `width` dy vectors for `4 * width` FMAs (the filter-major order loaded 4 input
vectors per kernel: one load per FMA), and a channel's input plane stays in L1 while its
kernels run. Run remainders are taken by halving widths down to 1.

Images are split over `slots` (one per thread); a slot fills the input scratch of `images`
images at a time, accumulates each micro-kernel's `width x 4 x OW` register tile over them and
adds it into the slot's lane-wise partial sums; a final block reduces slots and lanes.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, index_dtype
from mest_compile.compiler.kernels.fill import make_fill
from mest_compile.compiler.kernels.pattern_taps import InputLayout, chain, forward_tap_offsets, input_layout


def widths(most: int) -> list[int]:
    """Micro-kernel widths, largest first: `most` (a power of two), then halves down to 1."""
    if most < 1 or most & (most - 1):
        raise ValueError(f"weight-gradient width must be a power of two, got {most}")
    return [most >> k for k in range(most.bit_length())]


def _width_loop(p: int, offsets: list[int], width: int, wider: int | None, geo: ConvGeometry,
                layout: InputLayout, rows: int, slots: int, images: int):
    """Maker of the macro running pattern `p`'s kernels of channel `c` in blocks of `width`.

    The blocks start after what the wider blocks (`wider`, None for the widest) took: with
    power-of-two widths, `cnt % wider` kernels are left and `(cnt % wider) // width` blocks fit.
    """
    d0, d1, d2, d3 = offsets
    OH, OW, PITCH, PLANE = geo.out_h, geo.out_w, layout.pitch, layout.plane
    TILES = OH // rows

    def make(prev):
        first = prev is None

        @T.macro
        def run(acc, PART, S, DY, TP, TK, TO, N, vt, m, c):
            if not first:
                prev(acc, PART, S, DY, TP, TK, TO, N, vt, m, c)
            # Indices are read as int32 (the buffers may be int16): counts and addresses stay int32.
            lo = T.Cast("int32", TP[c * NUM_PATTERNS + p])
            cnt = T.Cast("int32", TP[c * NUM_PATTERNS + p + 1]) - lo
            start = lo if wider is None else lo + cnt - cnt % wider
            blocks = cnt // width if wider is None else cnt % wider // width
            for cb in range(blocks):
                for jj, tap in T.grid(width, 4):
                    for w in T.vectorized(OW):
                        acc[jj, tap, w] = T.float32(0)
                for u, ot in T.grid(images, TILES):
                    if vt + (m * images + u) * slots < N:
                        for i in T.unroll(rows):
                            for jj in T.unroll(width):
                                for w in T.vectorized(OW):
                                    # dx_off holds the kernel's filter. (Indices stay inline: let-bound
                                    # ones here measured 1.6x slower.)
                                    acc[jj, 0, w] = acc[jj, 0, w] + DY[
                                        vt + (m * images + u) * slots, T.Cast("int32", TO[start + cb * width + jj]),
                                        ot * rows + i, w,
                                    ] * S[u, c * PLANE + d0 + (ot * rows + i) * PITCH + w]
                                    acc[jj, 1, w] = acc[jj, 1, w] + DY[
                                        vt + (m * images + u) * slots, T.Cast("int32", TO[start + cb * width + jj]),
                                        ot * rows + i, w,
                                    ] * S[u, c * PLANE + d1 + (ot * rows + i) * PITCH + w]
                                    acc[jj, 2, w] = acc[jj, 2, w] + DY[
                                        vt + (m * images + u) * slots, T.Cast("int32", TO[start + cb * width + jj]),
                                        ot * rows + i, w,
                                    ] * S[u, c * PLANE + d2 + (ot * rows + i) * PITCH + w]
                                    acc[jj, 3, w] = acc[jj, 3, w] + DY[
                                        vt + (m * images + u) * slots, T.Cast("int32", TO[start + cb * width + jj]),
                                        ot * rows + i, w,
                                    ] * S[u, c * PLANE + d3 + (ot * rows + i) * PITCH + w]
                for jj, tap in T.grid(width, 4):
                    for w in T.vectorized(OW):
                        PART[vt, T.Cast("int32", TK[start + cb * width + jj]), tap, w] = (
                            PART[vt, T.Cast("int32", TK[start + cb * width + jj]), tap, w] + acc[jj, tap, w]
                        )

        return run

    return make


def pattern_wgrad(
    geo: ConvGeometry, cols: int, rows: int, slots: int, images: int = 1, layout: InputLayout | None = None
) -> tirx.PrimFunc:
    """TIR of the weight-gradient kernel `f(x, dy, dx_ptr, dx_ker, dx_off, dv)`.

    Args:
        geo: the layer (3x3; batch, nnz and capacity symbolic).
        cols: kernels per micro-kernel, a power of two (register tile `cols x 4 x OW`).
        rows: output rows unrolled per micro-kernel step (must divide `out_h`).
        slots: parallel image slots (the number of threads).
        images: images a slot accumulates in registers before adding to its partial sums.
        layout: the input scratch (default `input_layout(geo)`).

    Buffers: `x (N, C, H, W)`, `dy (N, O, OH, OW)`, `dx_ptr`, `dx_ker`, `dx_off` as in the input
    gradient (`index_dtype(geo)`; `dx_off[e]` is kernel `e`'s filter), `dv (nnz, 4)` (written; row `j` is kernel `j`'s 4 tap gradients).
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s, p = geo.out_h, geo.out_w, geo.stride, geo.padding
    layout = layout or input_layout(geo)
    P, XR, PITCH = layout.size, layout.rows, layout.pitch
    assert OH % rows == 0, (OH, rows)
    TPN = C * NUM_PATTERNS + 1
    IDX = index_dtype(geo)
    fill = make_fill(C, H, W, s, p, p, XR, layout.phase_w)
    ws = widths(cols)
    makers = [
        _width_loop(q, offs, w, wider, geo, layout, rows, slots, images)
        for q, offs in enumerate(forward_tap_offsets(layout))
        for w, wider in zip(ws, [None, *ws[:-1]])
    ]
    runs = chain(makers)

    @T.prim_func(s_tir=True)
    def pattern_wgrad(x: T.handle, dy: T.handle, tp: T.handle, tk: T.handle, to: T.handle, dv: T.handle):
        T.func_attr({"global_symbol": "pattern_wgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        TP = T.match_buffer(tp, (TPN,), IDX)
        TK = T.match_buffer(tk, (cap,), IDX)
        TO = T.match_buffer(to, (cap,), IDX)
        DV = T.match_buffer(dv, (nnz, 4), "float32")
        PART = T.sblock_alloc_buffer((slots, nnz, 4, OW), "float32")
        for t in range(slots):
            with T.sblock("wgrad"):
                vt = T.axis.spatial(slots, t)
                T.reads(X[0:N, 0:C, 0:H, 0:W], DY[0:N, 0:O, 0:OH, 0:OW], TP[0:TPN], TK[0:cap], TO[0:cap])
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
                    for c in range(C):
                        runs(acc, PART, S, DY, TP, TK, TO, N, vt, m, c)
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
