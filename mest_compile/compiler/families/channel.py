"""The channel scheme's kernel family: whole output filters kept or pruned.

A pruned filter is a dropped output channel, so the compiled kernels are a dense conv over the
kept filters only (forward writes zeros into pruned channels; the input gradient reduces over
kept channels only; the weight gradient is computed for kept filters only). Format in
`formats/channel.py`, kernels in `kernels/channel_*.py`, host schedules in
`schedules/channel_host.py`, torch ops in `families/channel_ops.py`; this module compiles them
for a geometry and registers the family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.channel import SCHEME, ChannelFormat, kept_filters
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.channel_dgrad import channel_dgrad
from mest_compile.compiler.kernels.channel_fwd import channel_forward
from mest_compile.compiler.kernels.channel_wgrad import channel_wgrad
from mest_compile.compiler.schedules.channel_host import (
    ChannelTiles,
    has_clzero,
    schedule_dgrad,
    schedule_forward,
    schedule_wgrad,
)
from mest_compile.compiler.target import resolve_target


@dataclass
class ChannelKernels:
    """The compiled kernels of one layer geometry (callable with torch tensors, zero-copy).

    `forward(x, values, kept, slot, y)`, `dgrad(dy, values, kept, dx)`,
    `wgrad(x, dy, kept, dv)`; see `kernels/channel_*.py` for the buffers. With
    `tiles.fwd_clzero`, `y` must be 64-byte aligned (any tensor torch's CPU allocator returns).
    """

    geometry: ConvGeometry
    target: str
    tiles: ChannelTiles
    forward: Any
    dgrad: Any
    wgrad: Any
    executables: dict[str, Any] = field(repr=False)
    modules: dict[str, Any] = field(repr=False, default_factory=dict)
    build_seconds: float = 0.0
    gate_seconds: float = 0.0
    gate_errors: dict[str, float] = field(default_factory=dict)

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> ChannelFormat:
        """Pack `mask` in the layout these kernels read."""
        return ChannelFormat.pack(mask, self.geometry, capacity)

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad; `kind`: "asm" or "ll")."""
        return self.executables[which].mod.inspect_source(kind)

    def tir(self, which: str = "forward") -> str:
        """The scheduled TIR of one kernel, as TVMScript."""
        return self.modules[which].script()


def compile_channel_kernels(geo: ConvGeometry, target: Any = "host", tiles: ChannelTiles | None = None) -> ChannelKernels:
    """Compile (without gating or caching) the three channel kernels of `geo`."""
    tgt = resolve_target(target)
    tiles = tiles or ChannelTiles.default(geo, int(tgt.attrs.get("num-cores", 1)), clzero=has_clzero(tgt))
    start = time.perf_counter()
    mods = {
        "forward": schedule_forward(channel_forward(geo, tiles.fwd_filters, tiles.fwd_rows, tiles.fwd_clzero)),
        "dgrad": schedule_dgrad(channel_dgrad(geo, tiles.dgrad_channels, tiles.dgrad_rows)),
        "wgrad": schedule_wgrad(
            channel_wgrad(geo, tiles.wgrad_filters, tiles.wgrad_slots, tiles.wgrad_images, tiles.wgrad_kh_rows)
        ),
    }
    exes = {name: tvm.compile(mod, target=tgt) for name, mod in mods.items()}
    return ChannelKernels(
        geometry=geo,
        target=str(tgt),
        tiles=tiles,
        forward=exes["forward"]["channel_fwd"],
        dgrad=exes["dgrad"]["channel_dgrad"],
        wgrad=exes["wgrad"]["channel_wgrad"],
        executables=exes,
        modules=mods,
        build_seconds=time.perf_counter() - start,
    )


def random_channel_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A legal channel mask shaped like the weight: filter 0 always pruned, the last one kept."""
    o = weight_shape[0]
    kept = torch.rand(o, generator=generator) < density
    kept[-1] = True
    kept[0] = False
    return kept.reshape(-1, *([1] * (len(weight_shape) - 1))).expand(weight_shape).clone()


class ChannelFamily(KernelFamily):
    """Channel-pruned kernels: dense convs over the kept filters, vectorised over output pixels."""

    schemes = (SCHEME,)
    unit = "filter"

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.kernel_w > 3 * geometry.stride:
            # The input gradient keeps at most 3 column-shifted copies of its scratch.
            return f"kernel width {geometry.kernel_w} with stride {geometry.stride}"
        if geometry.stride > 2:
            return f"stride {geometry.stride} (the fill stage handles 1 and 2)"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int(kept_filters(mask.detach().cpu()).sum())

    def build(self, geometry: ConvGeometry, target: Any) -> ChannelKernels:
        return compile_channel_kernels(geometry, target)

    def pack(self, kernels: Any, mask: torch.Tensor, capacity: int | None = None) -> ChannelFormat:
        return kernels.pack(mask, capacity)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.channel_ops import channel_conv2d_packed

        return channel_conv2d_packed(x, weight, fmt, kernels.target)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_channel_mask(weight_shape, 0.4, generator)

    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: Any,
                    kernels: Any) -> dict[str, Callable[[], object]]:
        def fwd() -> None:
            kernels.forward(x, fmt.values(weight), fmt.kept, fmt.slot, x.new_empty(dy.shape))

        def dgrad() -> None:
            kernels.dgrad(dy, fmt.values(weight), fmt.kept, torch.empty_like(x))

        def wgrad() -> None:
            dv = x.new_empty(fmt.nnz, *weight.shape[1:])
            kernels.wgrad(x, dy, fmt.kept, dv)
            torch.zeros_like(weight).index_copy_(0, fmt.gather[: fmt.nnz], dv)

        return {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}


    # ---- graph rewriting: the forward kernel alone, for call_tir in a Relax graph ------------
    forward_buffer_names = ("values", "kept", "slot")

    def forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        # Portable tiles (no CLZERO): a rewritten graph is built for any CPU, not only Zen.
        tiles = ChannelTiles.default(geometry, 1)
        return schedule_forward(channel_forward(geometry, tiles.fwd_filters, tiles.fwd_rows))["main"]

    def gpu_forward_func(self, geometry: ConvGeometry) -> tvm.tirx.PrimFunc:
        from mest_compile.compiler.kernels.channel_fwd_gpu import channel_forward_gpu
        from mest_compile.compiler.schedules.gpu import bind_spatial

        return bind_spatial(channel_forward_gpu(geometry), ("conv",))

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> ChannelFormat:
        return ChannelFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.kept, fmt.slot]

CHANNEL = ChannelFamily()
FAMILIES.add("channel", CHANNEL)


def channel_kernels(geometry: ConvGeometry, target: Any = "host") -> ChannelKernels:
    """The gated, cached channel kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    kernels = kernels_for(CHANNEL, geometry, target)
    assert isinstance(kernels, ChannelKernels)
    return kernels
