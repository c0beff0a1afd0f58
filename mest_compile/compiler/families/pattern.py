"""The pattern schemes' kernel family: `pattern` and `pattern+filter_balance`.

Every kept 3x3 kernel holds one of MEST's 8 four-entry patterns; kernels are grouped by pattern
and each pattern runs its own specialised loop (PatDNN / MEST's compiler). Filter balance only
changes how many kernels each filter keeps, which the same kernels handle (the capacity is in
kernels either way). Format in `formats/pattern.py`, kernels in `kernels/pattern_*.py`, host
schedules in `schedules/pattern_host.py`, the torch ops shared by every family in `families/ops.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.families.compiled import CompiledKernels
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import (
    NUM_PATTERNS,
    PATTERNS,
    SCHEMES,
    TAPS_PER_KERNEL,
    PatternFormat,
    pattern_ids,
)
from mest_compile.compiler.kernels.pattern_dgrad import pattern_dgrad
from mest_compile.compiler.kernels.pattern_fwd import pattern_forward
from mest_compile.compiler.kernels.pattern_taps import input_layout
from mest_compile.compiler.kernels.pattern_wgrad import pattern_wgrad
from mest_compile.schedules.pattern_host import PatternTiles, pattern_knobs


def random_pattern_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator,
                        per_filter: int | None = None) -> torch.Tensor:
    """A legal pattern mask `(O, C, 3, 3)`: random patterns, the first filter always empty.

    Args:
        density: fraction of kernels kept (ignored with `per_filter`).
        per_filter: keep exactly this many kernels in every filter but the first (filter balance).
    """
    o, c = weight_shape[0], weight_shape[1]
    if per_filter is None:
        kept = torch.rand(o, c, generator=generator) < density
    else:
        order = torch.rand(o, c, generator=generator).argsort(dim=1)
        kept = order < per_filter
    ids = torch.randint(0, NUM_PATTERNS, (o, c), generator=generator)
    kept[0] = False
    return PATTERNS[ids] & kept[:, :, None, None]


class PatternFamily(KernelFamily):
    """Pattern-sparse kernels: per (filter, pattern) runs with the pattern's 4 taps compiled in."""

    schemes = SCHEMES
    unit = "kernel"

    def supports(self, geometry: ConvGeometry) -> str | None:
        if (geometry.kernel_h, geometry.kernel_w) != (3, 3):
            return f"pattern kernels are 3x3, this layer's are {geometry.kernel_h}x{geometry.kernel_w}"
        if geometry.stride not in (1, 2):
            return f"stride {geometry.stride} (compiled pattern kernels take strides 1 and 2)"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int((pattern_ids(mask) > 0).sum())

    entries: ClassVar[dict[str, str]] = {"forward": "pattern_fwd", "dgrad": "pattern_dgrad", "wgrad": "pattern_wgrad"}

    def default_tiles(self, geometry: ConvGeometry, target: tvm.target.Target) -> PatternTiles:
        return PatternTiles.default(geometry, int(target.attrs.get("num-cores", 1)))

    def template(self, geometry: ConvGeometry, which: str, tiles: PatternTiles) -> tvm.tirx.PrimFunc:
        layout = input_layout(geometry, tiles.aligned_input)
        if which == "forward":
            return pattern_forward(geometry, tiles.fwd_rows, layout)
        if which == "dgrad":
            return pattern_dgrad(geometry, tiles.dgrad_rows)
        return pattern_wgrad(geometry, tiles.wgrad_cols, tiles.wgrad_rows, tiles.wgrad_slots, tiles.wgrad_images, layout)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: PatternTiles) -> dict[str, list[Any]]:
        return pattern_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: PatternTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> PatternFormat:
        return PatternFormat.pack(mask, geometry, capacity, x_plane=input_layout(geometry, tiles.aligned_input).plane)

    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: Any) -> list[torch.Tensor]:
        values = fmt.values(weight).contiguous()
        if which == "forward":
            return [x, values, fmt.fwd_ptr, fmt.x_off, torch.empty_like(dy)]
        if which == "dgrad":
            return [dy, values, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, torch.empty_like(x)]
        return [x, dy, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, torch.empty_like(values)]

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.ops import KernelBuffers, packed_conv2d

        buffers = KernelBuffers([fmt.fwd_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_ker, fmt.dx_off], [fmt.dx_ptr, fmt.dx_ker, fmt.dx_off])
        return packed_conv2d(x, fmt.values(weight), buffers, self, kernels)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_pattern_mask(weight_shape, 0.4, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        from mest_compile.compiler.formats.values import scatter_flat

        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.fwd_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz, TAPS_PER_KERNEL)
            kernels.wgrad(x, dy, fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, dv)
            scatter_flat(dv, fmt.flat_idx, weight.numel())

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}

    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "fwd_ptr", "x_off")

    def gpu_template(self, geometry: ConvGeometry, which: str = "forward") -> tvm.tirx.PrimFunc:
        if which != "forward":
            return super().gpu_template(geometry, which)
        from mest_compile.compiler.kernels.pattern_fwd_gpu import pattern_forward_gpu

        layout = input_layout(geometry, PatternTiles.default(geometry, 1).aligned_input)  # as forward_format
        return pattern_forward_gpu(geometry, layout.plane)

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> PatternFormat:
        layout = input_layout(geometry, PatternTiles.default(geometry, 1).aligned_input)
        return PatternFormat.pack(mask, geometry, x_plane=layout.plane)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.fwd_ptr, fmt.x_off]


PATTERN = PatternFamily()
FAMILIES.add("pattern", PATTERN)


def pattern_kernels(geometry: ConvGeometry, target: Any = "host") -> CompiledKernels:
    """The gated, cached pattern kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return cast(CompiledKernels, kernels_for(PATTERN, geometry, target))
