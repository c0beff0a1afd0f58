"""The pattern schemes' kernel family: `pattern` and `pattern+filter_balance`.

Every kept 3x3 kernel holds one of MEST's 8 four-entry patterns; kernels are grouped by pattern
and each pattern runs its own specialised loop (PatDNN / MEST's compiler). Filter balance only
changes how many kernels each filter keeps, which the same kernels handle (the capacity is in
kernels either way). Format in `formats/pattern.py`, kernels in `kernels/pattern_*.py`, host
schedules in `schedules/pattern_host.py`, torch ops in `families/pattern_ops.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.pattern import NUM_PATTERNS, PATTERNS, SCHEMES, TAPS_PER_KERNEL, PatternFormat, pattern_ids
from mest_compile.compiler.kernels.pattern_dgrad import pattern_dgrad
from mest_compile.compiler.kernels.pattern_fwd import pattern_forward
from mest_compile.compiler.kernels.pattern_taps import InputLayout, input_layout
from mest_compile.compiler.kernels.pattern_wgrad import pattern_wgrad
from mest_compile.compiler.schedules.pattern_host import PatternTiles, schedule_dgrad, schedule_forward, schedule_wgrad
from mest_compile.compiler.target import resolve_target


@dataclass
class PatternKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy)."""

    geometry: ConvGeometry
    target: str
    tiles: PatternTiles
    layout: InputLayout
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> PatternFormat:
        """Pack `mask` in the layout these kernels read."""
        return PatternFormat.pack(mask, self.geometry, capacity, x_plane=self.layout.plane)

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()


def compile_pattern_kernels(geo: ConvGeometry, target: Any = "host", tiles: PatternTiles | None = None) -> PatternKernels:
    """Compile (without gating or caching) the three pattern kernels of `geo`."""
    tgt = resolve_target(target)
    tiles = tiles or PatternTiles.default(geo, int(tgt.attrs.get("num-cores", 1)))
    layout = input_layout(geo, tiles.aligned_input)
    start = time.perf_counter()
    mods = {
        "forward": schedule_forward(pattern_forward(geo, tiles.fwd_rows, layout)),
        "dgrad": schedule_dgrad(pattern_dgrad(geo, tiles.dgrad_rows)),
        "wgrad": schedule_wgrad(
            pattern_wgrad(geo, tiles.wgrad_cols, tiles.wgrad_rows, tiles.wgrad_slots, tiles.wgrad_images, layout)
        ),
    }
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return PatternKernels(
        geometry=geo,
        target=str(tgt),
        tiles=tiles,
        layout=layout,
        forward=exes["forward"]["pattern_fwd"],
        dgrad=exes["dgrad"]["pattern_dgrad"],
        wgrad=exes["wgrad"]["pattern_wgrad"],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
    )


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

    def build(self, geometry: ConvGeometry, target: Any) -> PatternKernels:
        return compile_pattern_kernels(geometry, target)

    def pack(self, kernels: Any, mask: torch.Tensor, capacity: int | None = None) -> PatternFormat:
        return kernels.pack(mask, capacity)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.pattern_ops import pattern_conv2d_packed

        return pattern_conv2d_packed(x, weight, fmt, kernels.target)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_pattern_mask(weight_shape, 0.4, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.fwd_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_ker, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz, TAPS_PER_KERNEL)
            kernels.wgrad(x, dy, fmt.fwd_ptr, fmt.x_off, dv)
            torch.zeros(weight.numel()).index_put_((fmt.flat_idx[: fmt.nnz],), dv)

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}

    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "fwd_ptr", "x_off")

    def forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        tiles = PatternTiles.default(geometry, 1)  # forward tiles do not depend on threads
        layout = input_layout(geometry, tiles.aligned_input)
        return schedule_forward(pattern_forward(geometry, tiles.fwd_rows, layout))["main"]

    def gpu_forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        from mest_compile.compiler.kernels.pattern_fwd_gpu import pattern_forward_gpu
        from mest_compile.compiler.schedules.gpu import bind_spatial

        layout = input_layout(geometry, PatternTiles.default(geometry, 1).aligned_input)  # as forward_format
        return bind_spatial(pattern_forward_gpu(geometry, layout.plane), ("conv",))

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> PatternFormat:
        layout = input_layout(geometry, PatternTiles.default(geometry, 1).aligned_input)
        return PatternFormat.pack(mask, geometry, x_plane=layout.plane)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.fwd_ptr, fmt.x_off]


PATTERN = PatternFamily()
FAMILIES.add("pattern", PATTERN)


def pattern_kernels(geometry: ConvGeometry, target: Any = "host") -> PatternKernels:
    """The gated, cached pattern kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return cast(PatternKernels, kernels_for(PATTERN, geometry, target))
