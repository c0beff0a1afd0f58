"""The irregular (unstructured) kernel family: row-wise sparse convs over single kept weights.

Serves `irregular` and `filter_balance` used alone (any bool mask is legal for these kernels;
`filter_balance` keeps whole kernels, which this family treats as nine independent weights).
Format in `formats/irregular.py`, kernels in `kernels/irregular_*.py`, host schedules in
`schedules/irregular_host.py`; the runtime builds, gates and calls them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.irregular import IrregularFormat, random_irregular_mask
from mest_compile.compiler.formats.irregular_gpu import gpu_gradient_buffers
from mest_compile.compiler.kernels.irregular_dgrad import irregular_dgrad
from mest_compile.compiler.kernels.irregular_fwd import irregular_forward
from mest_compile.compiler.kernels.irregular_fwd_gpu import irregular_forward_gpu
from mest_compile.compiler.kernels.irregular_grad_gpu import irregular_dgrad_gpu, irregular_wgrad_gpu
from mest_compile.compiler.kernels.irregular_wgrad import irregular_wgrad
from mest_compile.compiler.target import Target
from mest_compile.schedules.irregular_host import IrregularTiles, irregular_knobs


class IrregularFamily(KernelFamily):
    """Unstructured kernels: CSR over filters with vector FMAs over output pixels."""

    name = "irregular"
    schemes = ("irregular", "filter_balance")
    unit = "weight"
    entries: ClassVar[dict[str, str]] = {"forward": "irregular_fwd", "dgrad": "irregular_dgrad",
                                         "wgrad": "irregular_wgrad"}
    buffers: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("row_ptr", "x_off"),
        "dgrad": ("dx_ptr", "dx_val", "dx_off"),
        "wgrad": ("seg_ptr", "x_off"),
    }
    templates: ClassVar[dict[str, Any]] = {
        "forward": lambda g, t: irregular_forward(g, t.fwd_rows),
        "dgrad": lambda g, t: irregular_dgrad(g, t.dgrad_rows, t.dgrad_chunk),
        "wgrad": lambda g, t: irregular_wgrad(g, t.wgrad_cols, t.wgrad_slots, t.wgrad_images, t.wgrad_channels),
    }
    gpu_templates: ClassVar[dict[str, Any]] = {"forward": irregular_forward_gpu, "dgrad": irregular_dgrad_gpu,
                                               "wgrad": irregular_wgrad_gpu}
    gpu_buffers: ClassVar[dict[str, tuple[str, ...]]] = {"dgrad": ("t_ptr", "t_units", "code"), "wgrad": ("code",)}
    packing = (("chunk_filters", "dgrad_chunk"), ("channel_block", "wgrad_channels"))

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.stride not in (1, 2):
            return f"stride {geometry.stride} (the input scratch fill handles strides 1 and 2)"
        if geometry.dy_shifts > 3:
            return f"kernel width {geometry.kernel_w} at stride {geometry.stride} (input gradient reads at most 3 shifts)"
        return None

    def default_tiles(self, geometry: ConvGeometry, target: Target) -> IrregularTiles:
        return IrregularTiles.default(geometry, target.num_cores)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: IrregularTiles) -> dict[str, list[Any]]:
        return irregular_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: IrregularTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> IrregularFormat:
        return IrregularFormat.pack(mask, geometry, capacity, chunk_filters=tiles.dgrad_chunk,
                                    channel_block=tiles.wgrad_channels)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_irregular_mask(weight_shape, 0.3, generator)

    def gpu_derived(self, fmt: IrregularFormat) -> dict[str, torch.Tensor]:
        return gpu_gradient_buffers(fmt)

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> IrregularFormat:
        return IrregularFormat.pack(mask, geometry)


FAMILIES.add("irregular", IrregularFamily())
