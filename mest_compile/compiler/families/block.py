"""The block scheme's kernel family: 4x1 blocks (4 consecutive filters at one input position).

Format in `formats/block.py`, kernels in `kernels/block_*.py`, host schedules in
`schedules/block_host.py`, torch ops in `families/block_ops.py`; this module compiles them for a
geometry and registers the family.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.block import BLOCK_ROWS, SCHEME, BlockFormat, kept_blocks
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.block_dgrad import block_dgrad
from mest_compile.compiler.kernels.block_fwd import block_forward
from mest_compile.compiler.kernels.block_wgrad import block_wgrad
from mest_compile.compiler.schedules.block_host import BlockTiles, schedule_dgrad, schedule_forward, schedule_wgrad
from mest_compile.compiler.target import resolve_target


@dataclass
class BlockKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy)."""

    geometry: ConvGeometry
    target: str
    tiles: BlockTiles
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)

    def pack(self, mask, capacity: int | None = None):
        """Pack `mask` in the layout these kernels read (a `BlockFormat`)."""
        from mest_compile.compiler.formats.block import BlockFormat

        return BlockFormat.pack(mask, self.geometry, capacity, chunk_groups=self.tiles.dgrad_chunk)

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()



def compile_block_kernels(geo: ConvGeometry, target: Any = "host", tiles: BlockTiles | None = None) -> BlockKernels:
    """Compile (without gating or caching) the three block kernels of `geo`."""
    tgt = resolve_target(target)
    tiles = tiles or BlockTiles.default(geo, int(tgt.attrs.get("num-cores", 1)))
    start = time.perf_counter()
    mods = {
        "forward": schedule_forward(block_forward(geo, tiles.fwd_rows)),
        "dgrad": schedule_dgrad(block_dgrad(geo, tiles.dgrad_rows, tiles.dgrad_chunk)),
        "wgrad": schedule_wgrad(block_wgrad(geo, tiles.wgrad_cols, tiles.wgrad_slots, tiles.wgrad_images)),
    }
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return BlockKernels(
        geometry=geo,
        target=str(tgt),
        tiles=tiles,
        forward=exes["forward"]["block_fwd"],
        dgrad=exes["dgrad"]["block_dgrad"],
        wgrad=exes["wgrad"]["block_wgrad"],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
    )


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

    def build(self, geometry: ConvGeometry, target: Any) -> BlockKernels:
        return compile_block_kernels(geometry, target)

    def pack(self, kernels: Any, mask: torch.Tensor, capacity: int | None = None) -> BlockFormat:
        return kernels.pack(mask, capacity)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.block_ops import block_conv2d_packed

        return block_conv2d_packed(x, weight, fmt, kernels.target)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_block_mask(weight_shape[0], tuple(weight_shape[1:]), 0.4, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        def fwd() -> None:
            y = x.new_empty(dy.shape)
            kernels.forward(x, fmt.values(weight), fmt.group_ptr, fmt.x_off, y)

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.dx_ptr, fmt.dx_blk, fmt.dx_off, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz, BLOCK_ROWS)
            kernels.wgrad(x, dy, fmt.group_ptr, fmt.x_off, dv)
            torch.zeros(weight.numel()).index_put_((fmt.flat_idx[: fmt.nnz],), dv)

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}

    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "group_ptr", "x_off")

    def forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        rows = BlockTiles.default(geometry, 1).fwd_rows  # forward tiles do not depend on threads
        return schedule_forward(block_forward(geometry, rows))["main"]

    def gpu_forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        from mest_compile.compiler.kernels.block_fwd_gpu import block_forward_gpu
        from mest_compile.compiler.schedules.gpu import bind_spatial

        return bind_spatial(block_forward_gpu(geometry), ("conv",))

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> BlockFormat:
        return BlockFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.group_ptr, fmt.x_off]


BLOCK = BlockFamily()
FAMILIES.add("block", BLOCK)


def block_kernels(geometry: ConvGeometry, target: Any = "host") -> BlockKernels:
    """The gated, cached block kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return kernels_for(BLOCK, geometry, target)
