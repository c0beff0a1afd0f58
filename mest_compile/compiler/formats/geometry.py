"""Conv layer geometry and the scratch layouts the compiled kernels index into.

All three block kernels read activations through a per-image *scratch* that a fill stage builds
inside the kernel, so that the data-dependent inner loop has no boundary tests:

* forward / weight gradient read the input `x` through the **input scratch**: `x` zero-padded
  and, for stride `s > 1`, split into `s x s` phases. Plane `(a, c)` holds padded rows
  `a, a+s, a+2s, ...` of channel `c`; inside a row the `s` column phases `b` lie side by side
  (`Wh` values each), so the row pitch is `s * Wh`. A weight column `(c, kh, kw)` then becomes one
  flat offset, and output pixel `(oh, ow)` reads `scratch[offset + oh * pitch + ow]` for every
  stride: contiguous vector loads over `ow`.
* the input gradient reads `dy` through the **gradient scratch**: `dy` zero-padded so that each
  output phase `(a, b)` of `dx` is a stride-1 correlation over it; for narrow rows with one
  copy per column shift `(shift, o, row, lane)` so that its loads are aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from mest_compile.errors import MestError


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvGeometry:
    """One conv layer's static shape (batch excluded: kernels take any batch size).

    Example:
        >>> g = ConvGeometry(32, 32, 32, 64, 3, 3, stride=2, padding=1)
        >>> (g.out_h, g.out_w)
        (16, 16)
    """

    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        if min(self.in_channels, self.in_h, self.in_w, self.out_channels, self.kernel_h, self.kernel_w, self.stride) < 1:
            raise MestError(f"conv geometry has a non-positive size: {self}")
        if self.padding < 0:
            raise MestError(f"negative padding: {self}")
        if self.out_h < 1 or self.out_w < 1:
            raise MestError(f"conv geometry gives an empty output: {self}")

    @classmethod
    def of(cls, x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, padding: int) -> "ConvGeometry":
        """Geometry of `conv2d(x, w, stride, padding)` from the two shapes (NCHW, OIHW)."""
        _, c, h, w = x_shape
        o, ci, kh, kw = w_shape
        if ci != c:
            raise MestError(f"input has {c} channels, weight expects {ci}")
        return cls(int(c), int(h), int(w), int(o), int(kh), int(kw), int(stride), int(padding))

    # ---- output ---------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        return (self.in_h + 2 * self.padding - self.kernel_h) // self.stride + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + 2 * self.padding - self.kernel_w) // self.stride + 1

    @property
    def columns(self) -> int:
        """Columns of the weight viewed as a matrix `(O, C * kh * kw)`."""
        return self.in_channels * self.kernel_h * self.kernel_w

    # ---- input scratch (forward, weight gradient) ----------------------------------------
    @property
    def x_rows(self) -> int:
        """Rows per phase plane of the input scratch."""
        return _ceil_div(self.in_h + 2 * self.padding, self.stride)

    @property
    def x_phase_w(self) -> int:
        """Values per column phase in one scratch row."""
        return _ceil_div(self.in_w + 2 * self.padding, self.stride)

    @property
    def x_pitch(self) -> int:
        """Distance between consecutive scratch rows (all column phases of a row)."""
        return self.stride * self.x_phase_w

    @property
    def x_size(self) -> int:
        """Floats of input scratch per image."""
        return self.stride * self.in_channels * self.x_rows * self.x_pitch

    @cached_property
    def x_offsets(self) -> torch.Tensor:
        """int32 `(C*kh*kw,)`: scratch offset of weight column `(c, kh, kw)` for output (0, 0)."""
        s, kh_n, kw_n = self.stride, self.kernel_h, self.kernel_w
        col = torch.arange(self.columns)
        c, kh, kw = col // (kh_n * kw_n), col % (kh_n * kw_n) // kw_n, col % kw_n
        plane = (kh % s) * self.in_channels + c
        off = ((plane * self.x_rows + kh // s) * self.x_pitch) + (kw % s) * self.x_phase_w + kw // s
        return off.to(torch.int32)

    # ---- gradient scratch (input gradient) ------------------------------------------------
    @property
    def dx_rows(self) -> int:
        """Rows of one output phase plane of dx."""
        return _ceil_div(self.in_h, self.stride)

    @property
    def dx_cols(self) -> int:
        return _ceil_div(self.in_w, self.stride)

    def _shift_range(self, k: int) -> tuple[int, int]:
        s, p = self.stride, self.padding
        shifts = [(a + p - t) // s for a in range(s) for t in range(k) if (a + p - t) % s == 0]
        return min(shifts), max(shifts)

    @property
    def dy_top(self) -> int:
        """Zero rows above `dy` in the gradient scratch."""
        return -self._shift_range(self.kernel_h)[0]

    @property
    def dy_left(self) -> int:
        return -self._shift_range(self.kernel_w)[0]

    @property
    def dy_rows(self) -> int:
        lo, hi = self._shift_range(self.kernel_h)
        return self.dx_rows + hi - lo

    @property
    def dy_shifts(self) -> int:
        """Column shifts of `dy` the input gradient reads."""
        lo, hi = self._shift_range(self.kernel_w)
        return hi - lo + 1

    @property
    def dy_copies(self) -> int:
        """Copies of `dy` in the gradient scratch: one per column shift for narrow rows, else one.

        With a copy per shift every load of the input gradient's inner loop starts on a vector
        boundary (that kernel loads once per FMA, so load cost is its limit): measured 5-10%
        faster on 8- and 16-wide rows, but 5% slower on 32-wide rows, where the copies no longer
        fit the caches as well.
        """
        return self.dy_shifts if self.dx_cols <= 16 else 1

    @property
    def dy_pitch(self) -> int:
        """Row pitch of the gradient scratch (whole vectors when there is a copy per shift)."""
        if self.dy_copies == 1:
            return self.dx_cols + self.dy_shifts - 1
        lanes = 16 if self.dx_cols > 8 else 8 if self.dx_cols > 4 else 4 if self.dx_cols > 2 else 1
        return -(-self.dx_cols // lanes) * lanes

    @property
    def dy_plane(self) -> int:
        return self.dy_rows * self.dy_pitch

    @property
    def dy_size(self) -> int:
        """Floats of gradient scratch per image."""
        return self.dy_copies * self.out_channels * self.dy_plane

    # ---- padded dx scratch (the block scheme's scatter input gradient, stride 1) ----------------
    @property
    def dx_pad_rows(self) -> int:
        """Rows of a dx plane zero-padded by the kernel's reach: dx row `ih` is padded row `ih + padding`."""
        return self.out_h + self.kernel_h - 1

    @property
    def dx_pad_pitch(self) -> int:
        """Floats per padded dx row: dx column `iw` is padded column `iw + padding`."""
        return self.out_w + self.kernel_w - 1

    @property
    def dx_pad_plane(self) -> int:
        return self.dx_pad_rows * self.dx_pad_pitch

    @cached_property
    def dx_phase_and_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per weight column: its dx output phase `a * s + b` and its gradient-scratch offset.

        Column `(c, kh, kw)` feeds dx pixels `(s*i + a, s*j + b)` with `a = (kh - p) mod s`,
        reading `dy` at `(i + (a + p - kh) / s, j + ...)`; the offset is for channel 0 of the
        block and dx phase pixel (0, 0).
        """
        s, p, kh_n, kw_n = self.stride, self.padding, self.kernel_h, self.kernel_w
        col = torch.arange(self.columns)
        kh, kw = col % (kh_n * kw_n) // kw_n, col % kw_n
        a, b = (kh - p) % s, (kw - p) % s
        dh, dw = torch.div(a + p - kh, s, rounding_mode="floor"), torch.div(b + p - kw, s, rounding_mode="floor")
        shift = dw + self.dy_left
        copy, col = (shift, 0) if self.dy_copies > 1 else (0, shift)
        off = copy * self.out_channels * self.dy_plane + (dh + self.dy_top) * self.dy_pitch + col
        return (a * s + b).to(torch.int32), off.to(torch.int32)
