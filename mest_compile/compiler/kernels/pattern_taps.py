"""Compile-time tap tables of the pattern kernels, their input-scratch layout, and macro chaining.

A pattern kernel's 4 taps are constants of the generated code: per pattern, the scratch offset of
each tap (relative to its channel's or filter's base) is a Python int baked into that pattern's
loop. TVMScript has no statement-level Python loop, so a static sequence of specialised loops
(one per pattern, or per (phase, pattern)) is built as a chain of macros, each calling the
previous one before adding its own statements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import pattern_taps


def chain(makers: Sequence[Callable[[Any], Any]]) -> Any:
    """Macro running `makers[0]`'s statements, then `makers[1]`'s, ... (None when empty).

    Each maker takes the previous macro (or None) and returns a macro that calls it first.
    """
    seq = None
    for make in makers:
        seq = make(seq)
    return seq


@dataclass(frozen=True)
class InputLayout:
    """The input scratch of the forward and weight-gradient kernels (see `ConvGeometry`).

    The same zero-padded, phase-split planes as the block scheme's, except that the width of a
    column phase may be rounded up to whole vectors (`aligned`): then the taps of kernel columns
    0 and 1 (stride 2) load whole aligned vectors instead of vectors split over two cache lines.
    A knob for tuning, off by default: on MEST's two stride-2 layers here it left the forward
    unchanged and made the weight gradient up to 20% slower (larger scratch, more L2 traffic).
    """

    stride: int
    channels: int
    rows: int  # rows per plane
    phase_w: int  # floats per column phase in a row
    aligned: bool

    @property
    def pitch(self) -> int:
        return self.stride * self.phase_w

    @property
    def plane(self) -> int:
        """Floats between the planes of consecutive channels (a kernel's channel base is `c * plane`)."""
        return self.rows * self.pitch

    @property
    def size(self) -> int:
        """Floats per image."""
        return self.stride * self.channels * self.plane

    def offset(self, kh: int, kw: int) -> int:
        """Scratch offset of tap `(kh, kw)` of channel 0 for output pixel (0, 0)."""
        s = self.stride
        return (kh % s) * self.channels * self.plane + (kh // s) * self.pitch + (kw % s) * self.phase_w + kw // s


def input_layout(geo: ConvGeometry, aligned: bool = False) -> InputLayout:
    """The input-scratch layout of `geo`, optionally with vector-aligned column phases."""
    phase_w = geo.x_phase_w
    if aligned:
        lanes = 16 if geo.out_w > 8 else 8  # a zmm, or the ymm an 8-wide row is loaded into
        phase_w = -(-phase_w // lanes) * lanes
    return InputLayout(geo.stride, geo.in_channels, geo.x_rows, phase_w, aligned)


def forward_tap_offsets(layout: InputLayout) -> list[list[int]]:
    """Per pattern, the input-scratch offset of each tap for channel 0 and output pixel (0, 0).

    For every stride the offset of tap `(kh, kw)` of channel `c` is `c * plane + offset(kh, kw)`,
    so a kernel needs only its channel base at run time.
    """
    return [[layout.offset(kh, kw) for kh, kw in taps] for taps in pattern_taps()]


def dgrad_phase_taps(geo: ConvGeometry) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
    """`(a, pattern) -> [(column phase b, tap index, gradient-scratch offset), ...]`, nonempty only.

    Tap `(kh, kw)` feeds the dx output phase `(a, b)` given by `ConvGeometry.dx_phase_and_offsets`
    at the offset given there for filter 0. A stride-2 pattern splits its taps over row phases;
    the taps of one row phase go into one loop over the kernels, whatever their column phase, so
    each kernel's indices are read once per row phase rather than once per phase pair.
    """
    phase, off = geo.dx_phase_and_offsets
    s = geo.stride
    table: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for p, taps in enumerate(pattern_taps()):
        for t, (kh, kw) in enumerate(taps):
            k = kh * 3 + kw
            ph = int(phase[k])
            table.setdefault((ph // s, p), []).append((ph % s, t, int(off[k])))
    return table
