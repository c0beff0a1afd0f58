"""The channel scheme's kernel family: whole output filters kept or pruned.

A pruned filter is a dropped output channel, so the compiled kernels are a dense conv over the
kept filters only (forward writes zeros into pruned channels; the input gradient reduces over
kept channels only; the weight gradient is computed for kept filters only). Format in
`formats/channel.py`, kernels in `kernels/channel_*.py`, host schedules in
`schedules/channel_host.py`, the torch ops shared by every family in `families/ops.py`; this module compiles them
for a geometry and registers the family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import tvm

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.families.compiled import CompiledKernels
from mest_compile.compiler.formats.channel import SCHEME, ChannelFormat, kept_filters
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.channel_dgrad import channel_dgrad
from mest_compile.compiler.kernels.channel_fwd import channel_forward
from mest_compile.compiler.kernels.channel_wgrad import channel_wgrad
from mest_compile.schedules.channel_host import (
    ChannelTiles,
    channel_knobs,
    has_clzero,
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

    entries: ClassVar[dict[str, str]] = {"forward": "channel_fwd", "dgrad": "channel_dgrad", "wgrad": "channel_wgrad"}

    def default_tiles(self, geometry: ConvGeometry, target: tvm.target.Target) -> ChannelTiles:
        return ChannelTiles.default(geometry, int(target.attrs.get("num-cores", 1)), clzero=has_clzero(target))

    def template(self, geometry: ConvGeometry, which: str, tiles: ChannelTiles) -> tvm.tirx.PrimFunc:
        if which == "forward":
            return channel_forward(geometry, tiles.fwd_filters, tiles.fwd_rows, tiles.fwd_clzero)
        if which == "dgrad":
            return channel_dgrad(geometry, tiles.dgrad_channels, tiles.dgrad_rows)
        return channel_wgrad(geometry, tiles.wgrad_filters, tiles.wgrad_slots, tiles.wgrad_images, tiles.wgrad_kh_rows)

    def knobs(self, geometry: ConvGeometry, which: str, tiles: ChannelTiles) -> dict[str, list[Any]]:
        return channel_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: ChannelTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> ChannelFormat:
        return ChannelFormat.pack(mask, geometry, capacity)

    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: Any) -> list[torch.Tensor]:
        values = fmt.values(weight).contiguous()
        if which == "forward":
            return [x, values, fmt.kept, fmt.slot, torch.empty_like(dy)]
        if which == "dgrad":
            return [dy, values, fmt.kept, torch.empty_like(x)]
        return [x, dy, fmt.kept, torch.empty_like(values)]

    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: Any, kernels: Any) -> torch.Tensor:
        from mest_compile.compiler.families.ops import KernelBuffers, packed_conv2d

        buffers = KernelBuffers([fmt.kept, fmt.slot], [fmt.kept], [fmt.kept])
        return packed_conv2d(x, fmt.values(weight), buffers, self, kernels)

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

    def gpu_template(self, geometry: ConvGeometry, which: str = "forward") -> tvm.tirx.PrimFunc:
        if which != "forward":
            return super().gpu_template(geometry, which)
        from mest_compile.compiler.kernels.channel_fwd_gpu import channel_forward_gpu

        return channel_forward_gpu(geometry)

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> ChannelFormat:
        return ChannelFormat.pack(mask, geometry)

    def forward_buffers(self, fmt: Any, weight: torch.Tensor) -> list[torch.Tensor]:
        return [fmt.values(weight).contiguous(), fmt.kept, fmt.slot]

CHANNEL = ChannelFamily()
FAMILIES.add("channel", CHANNEL)


def channel_kernels(geometry: ConvGeometry, target: Any = "host") -> CompiledKernels:
    """The gated, cached channel kernels of `geometry` on `target` (see `build.kernels_for`)."""
    from mest_compile.compiler.build import kernels_for

    return cast(CompiledKernels, kernels_for(CHANNEL, geometry, target))
