"""Scratch helpers shared by every scheme's host kernels: the zero-padded (phase-split) fill stage,
and the lane map that interleaves column phases back into dx rows.

A scratch plane holds `rows` rows of `pitch = stride * phase_w` floats. Row `i` of plane `q`
(source channel `q % channels`, row phase `q // channels`) comes from source row
`stride * i + q // channels - pad_top`, or is zero. Inside a row, column phase `b` occupies lanes
`[b * phase_w, (b + 1) * phase_w)` and its lane `j` takes source column `stride * j + b - pad_left`.

Per row and phase the valid lanes form one run, filled from one vector load of the source row
(a straight copy for stride 1, one constant one-source shuffle for stride 2, which LLVM lowers to
`vpermt2ps`); the few border lanes are zeroed with scalar stores. Shuffles that mix in a zero
vector or have odd lane counts are lowered by LLVM into scalar inserts, hence this split.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


@dataclass(frozen=True)
class PhaseRun:
    """Valid lanes `[first, first + count)` of one column phase and their source columns."""

    first: int
    count: int
    sources: tuple[int, ...]


def phase_runs(src_w: int, stride: int, pad_left: int, phase_w: int) -> list[PhaseRun]:
    runs = []
    for b in range(stride):
        valid = [j for j in range(phase_w) if 0 <= stride * j + b - pad_left < src_w]
        first = valid[0] if valid else 0
        runs.append(PhaseRun(first, len(valid), tuple(stride * j + b - pad_left for j in valid)))
    return runs


def _phase_macro(b: int, run: PhaseRun, src_w: int, phase_w: int, pitch: int, identity: bool):
    first, count, tail = run.first, run.count, phase_w - run.first - run.count
    lanes = list(run.sources)
    vector = count >= 2 and src_w >= 2
    step = lanes[1] - lanes[0] if len(lanes) > 1 else 1
    start = lanes[0] if lanes else 0

    @T.macro
    def phase(dst, dst_row, row_base, src, n, c, row):
        for z in range(first):
            dst[dst_row, row_base + b * phase_w + z] = T.float32(0)
        for z in range(tail):
            dst[dst_row, row_base + b * phase_w + first + count + z] = T.float32(0)
        if vector:
            if identity:
                dst[dst_row, T.ramp(row_base + b * phase_w + first, 1, count)] = src[n, c, row, T.ramp(lanes[0], 1, count)]
            else:
                dst[dst_row, T.ramp(row_base + b * phase_w + first, 1, count)] = T.Shuffle([src[n, c, row, T.ramp(0, 1, src_w)]], lanes)
        else:
            for z in range(count):
                dst[dst_row, row_base + b * phase_w + first + z] = src[n, c, row, start + step * z]

    return phase


def make_fill(channels: int, src_h: int, src_w: int, stride: int, pad_top: int, pad_left: int, rows: int, phase_w: int):
    """A TVMScript macro `fill(dst, dst_row, base, src, n, q)` filling plane `q` of image `n`.

    `dst[dst_row, base + i * pitch + lane]` receives row `i`, lane `lane` of the plane.
    Strides 1 and 2 (all MEST needs) get the vector path; see `phase_runs`.
    """
    if stride not in (1, 2):
        raise NotImplementedError(f"fill stage for stride {stride}")
    pitch = stride * phase_w
    runs = phase_runs(src_w, stride, pad_left, phase_w)
    ph0 = _phase_macro(0, runs[0], src_w, phase_w, pitch, stride == 1)
    ph1 = _phase_macro(1, runs[-1], src_w, phase_w, pitch, False)
    two = stride == 2

    @T.macro
    def fill(dst, dst_row, base, src, n, q):
        for i in range(rows):
            if stride * i + q // channels - pad_top >= 0 and stride * i + q // channels - pad_top < src_h:
                ph0(dst, dst_row, base + i * pitch, src, n, q % channels, stride * i + q // channels - pad_top)
                if two:
                    ph1(dst, dst_row, base + i * pitch, src, n, q % channels, stride * i + q // channels - pad_top)
            else:
                for z in range(pitch):
                    dst[dst_row, base + i * pitch + z] = T.float32(0)

    return fill


def interleave_map(width: int, stride: int, phase_w: int) -> list[int]:
    """Lane of the concatenated phase vectors that dx column `iw` comes from."""
    return [(iw % stride) * phase_w + iw // stride for iw in range(width)]
