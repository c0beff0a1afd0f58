"""The block scheme's kernel family: 4x1 blocks (4 consecutive filters at one input position).

Format in `formats/block.py`, kernels in `kernels/block_*.py`, host schedules in
`schedules/block_host.py`; the runtime builds, gates and calls them.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.block import SCHEME, BlockFormat, kept_blocks, random_block_mask
from mest_compile.compiler.formats.block_gpu import gpu_gradient_buffers
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.block_dgrad import block_dgrad
from mest_compile.compiler.kernels.block_dgrad_scatter import block_dgrad_scatter
from mest_compile.compiler.kernels.block_fwd import block_forward
from mest_compile.compiler.kernels.block_fwd_gpu import block_forward_gpu
from mest_compile.compiler.kernels.block_grad_gpu import block_dgrad_gpu, block_wgrad_gpu
from mest_compile.compiler.kernels.block_wgrad import block_wgrad
from mest_compile.compiler.formats.block import BLOCK_ROWS
from mest_compile.compiler.target import Target
from mest_compile.schedules.block_host import BlockTiles, block_knobs


def _dgrad(geometry: ConvGeometry, tiles: BlockTiles) -> tvm.tirx.PrimFunc:
    """The scatter input gradient where its tiles say so (stride 1), else the gather one."""
    if tiles.dgrad_scatter_rows:
        return block_dgrad_scatter(geometry, tiles.dgrad_scatter_rows, tiles.dgrad_channels)
    return block_dgrad(geometry, tiles.dgrad_rows, tiles.dgrad_chunk)


class BlockFamily(KernelFamily):
    """Block-sparse kernels: 4-row register micro-kernels over the kept columns of each filter group."""

    name = "block"
    schemes = (SCHEME,)
    unit = "block"
    entries: ClassVar[dict[str, str]] = {"forward": "block_fwd", "dgrad": "block_dgrad", "wgrad": "block_wgrad"}
    buffers: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("group_ptr", "x_off"),
        "dgrad": ("dx_ptr", "dx_blk", "dx_off"),
        "wgrad": ("group_ptr", "x_off"),
    }
    templates: ClassVar[dict[str, Any]] = {
        "forward": lambda g, t: block_forward(g, t.fwd_rows),
        "dgrad": _dgrad,
        "wgrad": lambda g, t: block_wgrad(g, t.wgrad_cols, t.wgrad_slots, t.wgrad_images),
    }
    gpu_templates: ClassVar[dict[str, Any]] = {"forward": block_forward_gpu, "dgrad": block_dgrad_gpu,
                                               "wgrad": block_wgrad_gpu}
    gpu_buffers: ClassVar[dict[str, tuple[str, ...]]] = {"dgrad": ("t_ptr", "t_units", "code"), "wgrad": ("code",)}
    packing = (("chunk_groups", "dgrad_chunk"), ("scatter_channels", "scatter_layout"))

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.out_channels % BLOCK_ROWS:
            return f"out_channels {geometry.out_channels} is not a multiple of {BLOCK_ROWS}"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int(kept_blocks(mask.detach().cpu()).sum())

    def unit_ids(self, weight_shape: tuple[int, ...]) -> torch.Tensor:
        rows, columns = weight_shape[0], math.prod(weight_shape[1:])
        groups = torch.arange(rows) // BLOCK_ROWS
        return (groups[:, None] * columns + torch.arange(columns)[None, :]).view(weight_shape)

    def default_tiles(self, geometry: ConvGeometry, target: Target) -> BlockTiles:
        return BlockTiles.default(geometry, target.num_cores)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: BlockTiles) -> dict[str, list[Any]]:
        return block_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: BlockTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> BlockFormat:
        return BlockFormat.pack(mask, geometry, capacity, chunk_groups=tiles.dgrad_chunk,
                                scatter_channels=tiles.scatter_layout)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_block_mask(weight_shape[0], tuple(weight_shape[1:]), 0.4, generator)

    def gpu_derived(self, fmt: BlockFormat) -> dict[str, torch.Tensor]:
        return gpu_gradient_buffers(fmt)

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> BlockFormat:
        return BlockFormat.pack(mask, geometry)


FAMILIES.add("block", BlockFamily())
