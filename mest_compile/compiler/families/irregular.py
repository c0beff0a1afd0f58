"""The irregular (unstructured) kernel family: row-wise sparse convs over single kept weights.

Serves `irregular` and `filter_balance` used alone (any bool mask is legal for these kernels;
`filter_balance` keeps whole kernels, which this family treats as nine independent weights).
Format in `formats/irregular.py`, kernels in `kernels/irregular_*.py`, host schedules in
`schedules/irregular_host.py`, torch ops in `families/irregular_ops.py`; this module compiles
them for a geometry and registers the family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.irregular import IrregularFormat
from mest_compile.compiler.kernels.irregular_dgrad import irregular_dgrad
from mest_compile.compiler.kernels.irregular_fwd import irregular_forward
from mest_compile.compiler.kernels.irregular_wgrad import irregular_wgrad
from mest_compile.compiler.schedules.irregular_host import (
    IrregularTiles,
    schedule_dgrad,
    schedule_forward,
    schedule_wgrad,
)
from mest_compile.compiler.target import resolve_target


@dataclass
class IrregularKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy)."""

    geometry: ConvGeometry
    target: str
    tiles: IrregularTiles
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> IrregularFormat:
        """Pack `mask` in the layout these kernels read."""
        return IrregularFormat.pack(
            mask, self.geometry, capacity, chunk_filters=self.tiles.dgrad_chunk, channel_block=self.tiles.wgrad_channels
        )

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()


def compile_irregular_kernels(
    geo: ConvGeometry, target: Any = "host", tiles: IrregularTiles | None = None
) -> IrregularKernels:
    """Compile (without gating or caching) the three irregular kernels of `geo`."""
    tgt = resolve_target(target)
    tiles = tiles or IrregularTiles.default(geo, int(tgt.attrs.get("num-cores", 1)))
    start = time.perf_counter()
    mods = {
        "forward": schedule_forward(irregular_forward(geo, tiles.fwd_rows)),
        "dgrad": schedule_dgrad(irregular_dgrad(geo, tiles.dgrad_rows, tiles.dgrad_chunk)),
        "wgrad": schedule_wgrad(irregular_wgrad(geo, tiles.wgrad_cols, tiles.wgrad_slots, tiles.wgrad_images, tiles.wgrad_channels)),
    }
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return IrregularKernels(
        geometry=geo,
        target=str(tgt),
        tiles=tiles,
        forward=exes["forward"]["irregular_fwd"],
        dgrad=exes["dgrad"]["irregular_dgrad"],
        wgrad=exes["wgrad"]["irregular_wgrad"],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
    )


def random_irregular_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A random bool mask; filter 0 and input channel 0 are always empty (empty rows and columns)."""
    mask = torch.rand(weight_shape, generator=generator) < density
    mask[0] = False
    mask[:, 0] = False
    return mask


class IrregularFamily(KernelFamily):
    """Unstructured kernels: CSR over filters with vector FMAs over output pixels."""

    schemes = ("irregular", "filter_balance")
    unit = "weight"

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.stride not in (1, 2):
            return f"stride {geometry.stride} (the input scratch fill handles strides 1 and 2)"
        if geometry.dy_shifts > 3:
            return f"kernel width {geometry.kernel_w} at stride {geometry.stride} (input gradient reads at most 3 shifts)"
        return None

    def build(self, geometry: ConvGeometry, target: Any) -> IrregularKernels:
        return compile_irregular_kernels(geometry, target)

    def pack(self, kernels: Any, mask: torch.Tensor, capacity: int | None = None) -> IrregularFormat:
        return kernels.pack(mask, capacity)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.irregular_ops import irregular_conv2d_packed

        return irregular_conv2d_packed(x, weight, fmt, kernels.target)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_irregular_mask(weight_shape, 0.3, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.row_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_val, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz)
            kernels.wgrad(x, dy, fmt.seg_ptr, fmt.x_off, dv)
            torch.zeros(weight.numel()).index_put_((fmt.flat_idx[: fmt.nnz],), dv)

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}


    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "row_ptr", "x_off")

    def forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        rows = IrregularTiles.default(geometry, 1).fwd_rows  # forward tiles do not depend on threads
        return schedule_forward(irregular_forward(geometry, rows))["main"]

    def gpu_forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        from mest_compile.compiler.kernels.irregular_fwd_gpu import irregular_forward_gpu
        from mest_compile.compiler.schedules.gpu import bind_spatial

        return bind_spatial(irregular_forward_gpu(geometry), ("conv",))

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> IrregularFormat:
        return IrregularFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.row_ptr, fmt.x_off]

IRREGULAR = IrregularFamily()
FAMILIES.add("irregular", IRREGULAR)


def irregular_kernels(geometry: ConvGeometry, target: Any = "host") -> IrregularKernels:
    """The gated, cached irregular kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    kernels = kernels_for(IRREGULAR, geometry, target)
    assert isinstance(kernels, IrregularKernels)
    return kernels
