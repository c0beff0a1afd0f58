"""Pattern-scheme input and weight gradients for GPUs (`coded_grad_gpu.py`).

A kept kernel's code is `(o * C + c) * 8 + pattern` (`formats/pattern_gpu.py`); its 4 lanes are
the pattern's taps, whose `(kh, kw)` come from the forward's two packed 64-bit constants
(`pattern_fwd_gpu.py`), indexed by `pattern * 4 + tap`: the loops stay uniform and no
per-pattern code is generated. The input gradient walks the format's own transposed CSR
(`dx_ptr` over `c * 8 + pattern`, `dx_ker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvm import tirx

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, TAPS_PER_KERNEL, index_dtype
from mest_compile.compiler.kernels.coded_grad_gpu import coded_dgrad_gpu, coded_wgrad_gpu
from mest_compile.compiler.kernels.pattern_fwd_gpu import PatternTaps


@dataclass(frozen=True)
class PatternCode:
    """A kept kernel's code `(o * C + c) * 8 + pattern`; its lanes are the pattern's 4 taps."""

    geo: ConvGeometry
    lanes: int = TAPS_PER_KERNEL
    runs: int = NUM_PATTERNS  # `dx_ptr` runs over `c * 8 + pattern`: channel c's kernels are 8 runs
    taps: PatternTaps = field(default_factory=PatternTaps)

    def filter(self, code: Any, lane: Any) -> Any:
        return tirx.truncdiv(code, self.geo.in_channels * NUM_PATTERNS)

    def channel(self, code: Any) -> Any:
        return tirx.truncmod(tirx.truncdiv(code, NUM_PATTERNS), self.geo.in_channels)

    def kh(self, code: Any, lane: Any) -> Any:
        return self.taps.kh(code, lane)

    def kw(self, code: Any, lane: Any) -> Any:
        return self.taps.kw(code, lane)


def pattern_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel `f(dy, values, dx_ptr, dx_ker, code, dx)` (unscheduled;
    `dx_ptr` and `dx_ker` of `index_dtype(geo)`, `code` int32)."""
    return coded_dgrad_gpu(geo, PatternCode(geo), "pattern_dgrad_gpu", index_dtype(geo))


def pattern_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel `f(x, dy, code, dv)` (unscheduled)."""
    return coded_wgrad_gpu(geo, PatternCode(geo), "pattern_wgrad_gpu")
