"""The pattern schemes' kernel family: `pattern` and `pattern+filter_balance`.

Every kept 3x3 kernel holds one of MEST's 8 four-entry patterns; kernels are grouped by pattern
and each pattern runs its own specialised loop (PatDNN / MEST's compiler). Filter balance only
changes how many kernels each filter keeps, which the same kernels handle (the capacity is in
kernels either way). Format in `formats/pattern.py`, kernels in `kernels/pattern_*.py`, host
schedules in `schedules/pattern_host.py`; the runtime builds, gates and calls them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import SCHEMES, PatternFormat, pattern_ids, random_pattern_mask
from mest_compile.compiler.formats.pattern_gpu import gpu_gradient_buffers
from mest_compile.compiler.kernels.pattern_dgrad import pattern_dgrad
from mest_compile.compiler.kernels.pattern_fwd import pattern_forward
from mest_compile.compiler.kernels.pattern_fwd_gpu import pattern_forward_gpu
from mest_compile.compiler.kernels.pattern_grad_gpu import pattern_dgrad_gpu, pattern_wgrad_gpu
from mest_compile.compiler.kernels.pattern_taps import input_layout
from mest_compile.compiler.kernels.pattern_wgrad import pattern_wgrad
from mest_compile.compiler.target import Target
from mest_compile.schedules.pattern_host import PatternTiles, pattern_knobs


def _forward(geometry: ConvGeometry, tiles: PatternTiles) -> tvm.tirx.PrimFunc:
    return pattern_forward(geometry, tiles.fwd_rows, input_layout(geometry, tiles.aligned_input))


def _wgrad(geometry: ConvGeometry, tiles: PatternTiles) -> tvm.tirx.PrimFunc:
    return pattern_wgrad(geometry, tiles.wgrad_cols, tiles.wgrad_rows, tiles.wgrad_slots, tiles.wgrad_images,
                         input_layout(geometry, tiles.aligned_input))


class PatternFamily(KernelFamily):
    """Pattern-sparse kernels: per (filter, pattern) runs with the pattern's 4 taps compiled in."""

    name = "pattern"
    schemes = SCHEMES
    unit = "kernel"
    entries: ClassVar[dict[str, str]] = {"forward": "pattern_fwd", "dgrad": "pattern_dgrad", "wgrad": "pattern_wgrad"}
    buffers: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("fwd_ptr", "x_off"),
        "dgrad": ("dx_ptr", "dx_ker", "dx_off"),
        "wgrad": ("dx_ptr", "dx_ker", "dx_off"),
    }
    templates: ClassVar[dict[str, Any]] = {
        "forward": _forward,
        "dgrad": lambda g, t: pattern_dgrad(g, t.dgrad_rows),
        "wgrad": _wgrad,
    }
    gpu_templates: ClassVar[dict[str, Any]] = {"forward": pattern_forward_gpu, "dgrad": pattern_dgrad_gpu,
                                               "wgrad": pattern_wgrad_gpu}
    gpu_buffers: ClassVar[dict[str, tuple[str, ...]]] = {"dgrad": ("dx_ptr", "dx_ker", "code"), "wgrad": ("code",)}

    @property
    def recipe_scheme(self) -> str:
        return "pattern+filter_balance"  # MEST's pattern recipes balance the kernels per filter

    def supports(self, geometry: ConvGeometry) -> str | None:
        if (geometry.kernel_h, geometry.kernel_w) != (3, 3):
            return f"pattern kernels are 3x3, this layer's are {geometry.kernel_h}x{geometry.kernel_w}"
        if geometry.stride not in (1, 2):
            return f"stride {geometry.stride} (compiled pattern kernels take strides 1 and 2)"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int((pattern_ids(mask) > 0).sum())

    def unit_ids(self, weight_shape: tuple[int, ...]) -> torch.Tensor:
        kernels = torch.arange(weight_shape[0] * weight_shape[1]).view(*weight_shape[:2], 1, 1)
        return kernels.expand(weight_shape)

    def default_tiles(self, geometry: ConvGeometry, target: Target) -> PatternTiles:
        return PatternTiles.default(geometry, target.num_cores)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: PatternTiles) -> dict[str, list[Any]]:
        return pattern_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: PatternTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> PatternFormat:
        # The buffers hold channels and filters, not scratch offsets: one packing serves every tiling.
        return PatternFormat.pack(mask, geometry, capacity)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_pattern_mask(weight_shape, 0.4, generator)

    def gpu_derived(self, fmt: PatternFormat) -> dict[str, torch.Tensor]:
        return gpu_gradient_buffers(fmt)


FAMILIES.add("pattern", PatternFamily())
