"""The fill stage shared by the block kernels: build a zero-padded (phase-split) scratch plane.

A scratch plane holds `rows` rows of `pitch` floats. Row `i` of plane `q` (source channel
`q % channels`, row phase `q // channels`) comes from source row `stride * i + phase - pad_top`
(or is zero). Inside a row, lane `b * phase_w + j` takes source column `stride * j + b - pad_left`
(or zero). Both the source row and the scratch row are whole vectors and the lane map is one
constant shuffle, so padding and phase splitting cost one vector load, one shuffle and one
vector store per row (LLVM lowers the shuffle to `vpermt2ps`), with no per-lane tests.
"""

from __future__ import annotations

from tvm.script import tirx as T


def lane_map(src_w: int, stride: int, pad_left: int, phase_w: int) -> list[int]:
    """Source lane of every scratch lane; `src_w` selects the zero vector."""
    out = []
    for b in range(stride):
        for j in range(phase_w):
            col = stride * j + b - pad_left
            out.append(col if 0 <= col < src_w else src_w)
    return out


def make_fill(channels: int, src_h: int, src_w: int, stride: int, pad_top: int, pad_left: int, rows: int, phase_w: int):
    """A TVMScript macro `fill(dst, dst_row, base, src, n, q)` filling plane `q` of image `n`.

    `dst[dst_row, base + i * pitch + lane]` receives row `i`, lane `lane` of the plane.
    """
    pitch = stride * phase_w
    idx = lane_map(src_w, stride, pad_left, phase_w)

    if src_w >= 2 and pitch >= 2:

        @T.macro
        def fill(dst, dst_row, base, src, n, q):
            for i in range(rows):
                if stride * i + q // channels - pad_top >= 0 and stride * i + q // channels - pad_top < src_h:
                    dst[dst_row, T.ramp(base + i * pitch, 1, pitch)] = T.Shuffle(
                        [src[n, q % channels, stride * i + q // channels - pad_top, T.ramp(0, 1, src_w)], T.Broadcast(T.float32(0), src_w)],
                        idx,
                    )
                else:
                    dst[dst_row, T.ramp(base + i * pitch, 1, pitch)] = T.Broadcast(T.float32(0), pitch)

    else:  # degenerate widths: a scalar loop (vectors need two lanes)

        @T.macro
        def fill(dst, dst_row, base, src, n, q):
            for i, lane in T.grid(rows, pitch):
                dst[dst_row, base + i * pitch + lane] = T.if_then_else(
                    stride * i + q // channels - pad_top >= 0
                    and stride * i + q // channels - pad_top < src_h
                    and stride * (lane % phase_w) + lane // phase_w - pad_left >= 0
                    and stride * (lane % phase_w) + lane // phase_w - pad_left < src_w,
                    src[n, q % channels, stride * i + q // channels - pad_top, stride * (lane % phase_w) + lane // phase_w - pad_left],
                    T.float32(0),
                )

    return fill
