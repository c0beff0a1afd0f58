"""The block scheme's kernel family: 4x1 blocks (4 consecutive filters at one input position).

Format in `formats/block.py`, kernels in `kernels/block_*.py`, host schedules in
`schedules/block_host.py`, the torch ops shared by every family in `families/ops.py`; this module compiles them for a
geometry and registers the family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.families.compiled import CompiledKernels
from mest_compile.compiler.formats.block import (
    BLOCK_ROWS,
    SCHEME,
    BlockFormat,
    kept_blocks,
)
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.block_dgrad import block_dgrad
from mest_compile.compiler.kernels.block_dgrad_scatter import block_dgrad_scatter
from mest_compile.compiler.kernels.block_fwd import block_forward
from mest_compile.compiler.kernels.block_wgrad import block_wgrad
from mest_compile.schedules.block_host import BlockTiles, block_knobs


def random_block_mask(out_channels: int, columns_shape: tuple[int, ...], density: float,
                      generator: torch.Generator) -> torch.Tensor:
    """A legal block mask `(O, C, kh, kw)`; the first filter group is always empty."""
    groups = out_channels // BLOCK_ROWS
    cols = int(torch.tensor(columns_shape).prod())
    kept = torch.rand(groups, cols, generator=generator) < density
    kept[0] = False
    return kept[:, None, :].expand(groups, BLOCK_ROWS, cols).reshape(out_channels, *columns_shape)


class BlockFamily(KernelFamily):
    """Block-sparse kernels: 4-row register micro-kernels over the kept columns of each filter group."""

    schemes = (SCHEME,)
    unit = "block"

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.out_channels % BLOCK_ROWS:
            return f"out_channels {geometry.out_channels} is not a multiple of {BLOCK_ROWS}"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int(kept_blocks(mask.detach().cpu()).sum())

    entries: ClassVar[dict[str, str]] = {"forward": "block_fwd", "dgrad": "block_dgrad", "wgrad": "block_wgrad"}

    def default_tiles(self, geometry: ConvGeometry, target: tvm.target.Target) -> BlockTiles:
        return BlockTiles.default(geometry, int(target.attrs.get("num-cores", 1)))

    def template(self, geometry: ConvGeometry, which: str, tiles: BlockTiles) -> tvm.tirx.PrimFunc:
        if which == "forward":
            return block_forward(geometry, tiles.fwd_rows)
        if which == "dgrad" and tiles.dgrad_scatter_rows:
            return block_dgrad_scatter(geometry, tiles.dgrad_scatter_rows, tiles.dgrad_channels)
        if which == "dgrad":
            return block_dgrad(geometry, tiles.dgrad_rows, tiles.dgrad_chunk)
        return block_wgrad(geometry, tiles.wgrad_cols, tiles.wgrad_slots, tiles.wgrad_images)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: BlockTiles) -> dict[str, list[Any]]:
        return block_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: BlockTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> BlockFormat:
        return BlockFormat.pack(mask, geometry, capacity, chunk_groups=tiles.dgrad_chunk,
                                scatter_channels=tiles.scatter_layout)

    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: Any) -> list[torch.Tensor]:
        values = fmt.values(weight).contiguous()
        if which == "forward":
            return [x, values, fmt.group_ptr, fmt.x_off, torch.empty_like(dy)]
        if which == "dgrad":
            return [dy, values, fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, torch.empty_like(x)]
        return [x, dy, fmt.group_ptr, fmt.x_off, torch.empty_like(values)]

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.op_args import check_packing
        from mest_compile.compiler.families.ops import KernelBuffers, packed_conv2d

        check_packing((fmt.chunk_groups, fmt.scatter_channels), (kernels.tiles.dgrad_chunk, kernels.tiles.scatter_layout),
                      "input-gradient chunking (filter groups, scatter channels)")
        buffers = KernelBuffers([fmt.group_ptr, fmt.x_off], [fmt.dx_ptr, fmt.dx_blk, fmt.dx_off], [fmt.group_ptr, fmt.x_off])
        return packed_conv2d(x, fmt.values(weight), buffers, self, kernels)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_block_mask(weight_shape[0], tuple(weight_shape[1:]), 0.4, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        from mest_compile.compiler.formats.values import scatter_flat

        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.group_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz, BLOCK_ROWS)
            kernels.wgrad(x, dy, fmt.group_ptr, fmt.x_off, dv)
            scatter_flat(dv, fmt.flat_idx, weight.numel())

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}

    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "group_ptr", "x_off")

    def gpu_template(self, geometry: ConvGeometry, which: str = "forward") -> tvm.tirx.PrimFunc:
        from mest_compile.compiler.kernels.block_fwd_gpu import block_forward_gpu
        from mest_compile.compiler.kernels.block_grad_gpu import (
            block_dgrad_gpu,
            block_wgrad_gpu,
        )

        return {"forward": block_forward_gpu, "dgrad": block_dgrad_gpu, "wgrad": block_wgrad_gpu}[which](geometry)

    def gpu_kernel_args(self, which: str, x: torch.Tensor, values: torch.Tensor, dy: torch.Tensor | None,
                        fmt: Any) -> list[torch.Tensor]:
        from mest_compile.compiler.formats.block_gpu import gpu_gradient_buffers

        if which == "forward" or dy is None:
            return super().gpu_kernel_args(which, x, values, dy, fmt)
        extra = gpu_gradient_buffers(fmt)
        if which == "dgrad":
            return [dy, values, extra["t_ptr"], extra["t_blk"], extra["code"], torch.empty_like(x)]
        return [x, dy, extra["code"], torch.empty_like(values)]

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> BlockFormat:
        return BlockFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.group_ptr, fmt.x_off]


BLOCK = BlockFamily()
FAMILIES.add("block", BLOCK)


def block_kernels(geometry: ConvGeometry, target: Any = "host") -> CompiledKernels:
    """The gated, cached block kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return cast(CompiledKernels, kernels_for(BLOCK, geometry, target))
