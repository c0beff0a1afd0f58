"""The irregular (unstructured) kernel family: row-wise sparse convs over single kept weights.

Serves `irregular` and `filter_balance` used alone (any bool mask is legal for these kernels;
`filter_balance` keeps whole kernels, which this family treats as nine independent weights).
Format in `formats/irregular.py`, kernels in `kernels/irregular_*.py`, host schedules in
`schedules/irregular_host.py`, the torch ops shared by every family in `families/ops.py`; this module compiles
them for a geometry and registers the family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.families.compiled import CompiledKernels
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.irregular import IrregularFormat
from mest_compile.compiler.kernels.irregular_dgrad import irregular_dgrad
from mest_compile.compiler.kernels.irregular_fwd import irregular_forward
from mest_compile.compiler.kernels.irregular_wgrad import irregular_wgrad
from mest_compile.schedules.irregular_host import (
    IrregularTiles,
    irregular_knobs,
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

    entries: ClassVar[dict[str, str]] = {"forward": "irregular_fwd", "dgrad": "irregular_dgrad", "wgrad": "irregular_wgrad"}

    def default_tiles(self, geometry: ConvGeometry, target: tvm.target.Target) -> IrregularTiles:
        return IrregularTiles.default(geometry, int(target.attrs.get("num-cores", 1)))

    def template(self, geometry: ConvGeometry, which: str, tiles: IrregularTiles) -> tvm.tirx.PrimFunc:
        if which == "forward":
            return irregular_forward(geometry, tiles.fwd_rows)
        if which == "dgrad":
            return irregular_dgrad(geometry, tiles.dgrad_rows, tiles.dgrad_chunk)
        return irregular_wgrad(geometry, tiles.wgrad_cols, tiles.wgrad_slots, tiles.wgrad_images, tiles.wgrad_channels)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: IrregularTiles) -> dict[str, list[Any]]:
        return irregular_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: IrregularTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> IrregularFormat:
        return IrregularFormat.pack(mask, geometry, capacity, chunk_filters=tiles.dgrad_chunk,
                                    channel_block=tiles.wgrad_channels)

    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: Any) -> list[torch.Tensor]:
        values = fmt.values(weight).contiguous()
        if which == "forward":
            return [x, values, fmt.row_ptr, fmt.x_off, torch.empty_like(dy)]
        if which == "dgrad":
            return [dy, values, fmt.dx_ptr, fmt.dx_val, fmt.dx_off, torch.empty_like(x)]
        return [x, dy, fmt.seg_ptr, fmt.x_off, torch.empty_like(values)]

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.op_args import check_packing
        from mest_compile.compiler.families.ops import KernelBuffers, packed_conv2d

        check_packing((fmt.chunk_filters, fmt.channel_block), (kernels.tiles.dgrad_chunk, kernels.tiles.wgrad_channels),
                      "(filters per input-gradient chunk, channels per weight-gradient block)")
        buffers = KernelBuffers([fmt.row_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_val, fmt.dx_off], [fmt.seg_ptr, fmt.x_off])
        return packed_conv2d(x, fmt.values(weight), buffers, self, kernels)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_irregular_mask(weight_shape, 0.3, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        from mest_compile.compiler.formats.values import scatter_flat

        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.row_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_val, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz)
            kernels.wgrad(x, dy, fmt.seg_ptr, fmt.x_off, dv)
            scatter_flat(dv, fmt.flat_idx, weight.numel())

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}


    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "row_ptr", "x_off")

    def gpu_template(self, geometry: ConvGeometry, which: str = "forward") -> tvm.tirx.PrimFunc:
        if which != "forward":
            return super().gpu_template(geometry, which)
        from mest_compile.compiler.kernels.irregular_fwd_gpu import (
            irregular_forward_gpu,
        )

        return irregular_forward_gpu(geometry)

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> IrregularFormat:
        return IrregularFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.row_ptr, fmt.x_off]

IRREGULAR = IrregularFamily()
FAMILIES.add("irregular", IRREGULAR)


def irregular_kernels(geometry: ConvGeometry, target: Any = "host") -> CompiledKernels:
    """The gated, cached irregular kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return cast(CompiledKernels, kernels_for(IRREGULAR, geometry, target))
