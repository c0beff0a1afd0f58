"""Pattern-scheme input gradient: `dx = conv2d_input(dy, weight * mask)`.

The transposed structure: kernels listed by input channel and pattern. One complete block per
(image, dx row tile); per input channel `c` and dx row phase `a` (stride 2 splits dx into
`s x s` phases, each a stride-1 correlation over the padded `dy` scratch), a register tile of
the `s` column phases of `rows` dx rows is zeroed, then for each pattern `p` with a tap in row
phase `a` a data-dependent loop over the channel's kernels of that pattern adds those taps
(constant offsets and column phases, 1 to 4 of them) times contiguous scratch rows of their
filter. Taps in one kernel column share scratch rows between neighbouring dx rows, so each `dy`
row is loaded once per kernel. The phases are interleaved back into dx rows by one constant
shuffle per row, as in the block scheme.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, index_dtype
from mest_compile.compiler.kernels.fill import interleave_map, make_fill
from mest_compile.compiler.kernels.pattern_taps import chain, dgrad_phase_taps


def _run(p: int, taps: list[tuple[int, int, int]], rows: int, qc: int, dp: int, plane: int):
    """Maker of the macro adding pattern `p`'s taps of one row phase for one channel.

    `taps` lists `(column phase b, tap index, scratch offset)`; each tap accumulates into its
    column phase's part of the tile. Kernel `e`'s filter base is `dx_off[e] * plane`.
    """
    nt = len(taps)
    (b0, t0, o0), (b1, t1, o1), (b2, t2, o2), (b3, t3, o3) = (taps + [(0, 0, 0)] * 4)[:4]

    def make(prev):
        first = prev is None

        @T.macro
        def run(acc, D, V, TP, TK, TO, vn, vt, c):
            if not first:
                prev(acc, D, V, TP, TK, TO, vn, vt, c)
            # Indices are read as int32 (the buffers may be int16): loop variable and addresses stay int32.
            for e in range(T.Cast("int32", TP[c * NUM_PATTERNS + p]),
                           T.Cast("int32", TP[c * NUM_PATTERNS + p + 1])):
                for i in T.unroll(rows):
                    for w in T.vectorized(qc):
                        acc[b0, i, w] = acc[b0, i, w] + V[T.Cast("int32", TK[e]), t0] * D[
                            vn, T.Cast("int32", TO[e]) * plane + o0 + (vt * rows + i) * dp + w]
                        if nt > 1:
                            acc[b1, i, w] = acc[b1, i, w] + V[T.Cast("int32", TK[e]), t1] * D[
                                vn, T.Cast("int32", TO[e]) * plane + o1 + (vt * rows + i) * dp + w]
                        if nt > 2:
                            acc[b2, i, w] = acc[b2, i, w] + V[T.Cast("int32", TK[e]), t2] * D[
                                vn, T.Cast("int32", TO[e]) * plane + o2 + (vt * rows + i) * dp + w]
                        if nt > 3:
                            acc[b3, i, w] = acc[b3, i, w] + V[T.Cast("int32", TK[e]), t3] * D[
                                vn, T.Cast("int32", TO[e]) * plane + o3 + (vt * rows + i) * dp + w]

        return run

    return make


def _phase(a: int, runs, geo: ConvGeometry, rows: int):
    """Maker of the macro computing dx row phase `a` of one channel's tile and storing it."""
    s, H, W, QC = geo.stride, geo.in_h, geo.in_w, geo.dx_cols
    imap = interleave_map(W, s, QC)
    vec_store = W >= 2 and QC >= 2
    has_runs = runs is not None

    def make(prev):
        first = prev is None

        @T.macro
        def phase(acc, D, V, TP, TK, TO, DX, vn, vt, c):
            if not first:
                prev(acc, D, V, TP, TK, TO, DX, vn, vt, c)
            for b in T.unroll(s):
                for i in T.unroll(rows):
                    for w in T.vectorized(QC):
                        acc[b, i, w] = T.float32(0)
            if has_runs:
                runs(acc, D, V, TP, TK, TO, vn, vt, c)
            for i in T.unroll(rows):
                if s * (vt * rows + i) + a < H:
                    if vec_store:
                        DX[vn, c, s * (vt * rows + i) + a, T.ramp(0, 1, W)] = T.Shuffle(
                            [acc[bb, i, T.ramp(0, 1, QC)] for bb in range(s)], imap
                        )
                    else:
                        for iw in range(W):
                            DX[vn, c, s * (vt * rows + i) + a, iw] = acc[iw % s, i, iw // s]

        return phase

    return make


def pattern_dgrad(geo: ConvGeometry, rows: int) -> tirx.PrimFunc:
    """TIR of the input-gradient kernel `f(dy, values, dx_ptr, dx_ker, dx_off, dx)`.

    Args:
        geo: the layer (3x3; batch and nnz symbolic).
        rows: dx rows (per phase) per register tile; must divide `geo.dx_rows`.

    The index buffers are of `index_dtype(geo)`; `dx_off[e]` is kernel `e`'s filter.
    """
    C, H, W, O = geo.in_channels, geo.in_h, geo.in_w, geo.out_channels
    OH, OW, s = geo.out_h, geo.out_w, geo.stride
    QR, QC = geo.dx_rows, geo.dx_cols
    DR, DP, PLANE, DS, NSH = geo.dy_rows, geo.dy_pitch, geo.dy_plane, geo.dy_size, geo.dy_copies
    assert QR % rows == 0, (QR, rows)
    TILES = QR // rows
    TPN = C * NUM_PATTERNS + 1
    IDX = index_dtype(geo)
    if NSH > 3:
        raise NotImplementedError(f"input gradient with {NSH} scratch copies (kernels wider than 3)")
    fill0, fill1, fill2 = [make_fill(O, OH, OW, 1, geo.dy_top, geo.dy_left - sh, DR, DP) for sh in range(3)]
    SHIFT = O * PLANE
    table = dgrad_phase_taps(geo)
    phase_makers = []
    for a in range(s):
        run_makers = [_run(p, table[(a, p)], rows, QC, DP, PLANE) for p in range(NUM_PATTERNS) if (a, p) in table]
        phase_makers.append(_phase(a, chain(run_makers), geo, rows))
    phases = chain(phase_makers)

    @T.prim_func(s_tir=True)
    def pattern_dgrad(dy: T.handle, v: T.handle, tp: T.handle, tk: T.handle, to: T.handle, dx: T.handle):
        T.func_attr({"global_symbol": "pattern_dgrad", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        cap = T.int32()
        DY = T.match_buffer(dy, (N, O, OH, OW), "float32")
        V = T.match_buffer(v, (nnz, 4), "float32")
        TP = T.match_buffer(tp, (TPN,), IDX)
        TK = T.match_buffer(tk, (cap,), IDX)
        TO = T.match_buffer(to, (cap,), IDX)
        DX = T.match_buffer(dx, (N, C, H, W), "float32")
        D = T.sblock_alloc_buffer((N, DS), "float32")
        for n, o in T.grid(N, O):
            with T.sblock("fill"):
                vn, vo = T.axis.remap("SS", [n, o])
                T.reads(DY[vn, vo, 0:OH, 0:OW])
                T.writes(D[vn, vo * PLANE : vo * PLANE + (NSH - 1) * SHIFT + PLANE])
                fill0(D, vn, vo * PLANE, DY, vn, vo)
                if NSH > 1:
                    fill1(D, vn, SHIFT + vo * PLANE, DY, vn, vo)
                if NSH > 2:
                    fill2(D, vn, 2 * SHIFT + vo * PLANE, DY, vn, vo)
        # Row tile outermost: one tile's dy rows stay in cache across channels.
        for n, t in T.grid(N, TILES):
            with T.sblock("dgrad"):
                vn, vt = T.axis.remap("SS", [n, t])
                T.reads(TP[0:TPN], TK[0:cap], TO[0:cap], V[0:nnz, 0:4], D[vn, 0:DS])
                # dx rows s*(t*rows + i) + a: a strided region, so the whole image is declared.
                T.writes(DX[vn, 0:C, 0:H, 0:W])
                acc = T.sblock_alloc_buffer((s, rows, QC), "float32", scope="local")
                for c in range(C):
                    phases(acc, D, V, TP, TK, TO, DX, vn, vt, c)

    return pattern_dgrad
