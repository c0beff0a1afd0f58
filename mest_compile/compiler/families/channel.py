"""The channel scheme's kernel family: whole output filters kept or pruned.

A pruned filter is a dropped output channel, so the compiled kernels are a dense conv over the
kept filters only (forward writes zeros into pruned channels; the input gradient reduces over
kept channels only; the weight gradient is computed for kept filters only). Format in
`formats/channel.py`, kernels in `kernels/channel_*.py`, host schedules in
`schedules/channel_host.py`; the runtime builds, gates and calls them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mest_compile.compiler.families import FAMILIES, KernelFamily
from mest_compile.compiler.formats.channel import SCHEME, ChannelFormat, kept_filters, random_channel_mask
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.channel_dgrad import channel_dgrad
from mest_compile.compiler.kernels.channel_fwd import channel_forward
from mest_compile.compiler.kernels.channel_fwd_gpu import channel_forward_gpu
from mest_compile.compiler.kernels.channel_grad_gpu import channel_dgrad_gpu, channel_wgrad_gpu
from mest_compile.compiler.kernels.channel_wgrad import channel_wgrad
from mest_compile.compiler.target import Target
from mest_compile.schedules.channel_host import ChannelTiles, channel_knobs, has_clzero


class ChannelFamily(KernelFamily):
    """Channel-pruned kernels: dense convs over the kept filters, vectorised over output pixels."""

    name = "channel"
    schemes = (SCHEME,)
    unit = "filter"
    # The forward writes output channel `kept[j]` for every row `j` of `values`.
    visits_every_value_row = True
    entries: ClassVar[dict[str, str]] = {"forward": "channel_fwd", "dgrad": "channel_dgrad", "wgrad": "channel_wgrad"}
    buffers: ClassVar[dict[str, tuple[str, ...]]] = {"forward": ("kept", "slot"), "dgrad": ("kept",), "wgrad": ("kept",)}
    templates: ClassVar[dict[str, Any]] = {
        "forward": lambda g, t: channel_forward(g, t.fwd_filters, t.fwd_rows, t.fwd_clzero),
        "dgrad": lambda g, t: channel_dgrad(g, t.dgrad_channels, t.dgrad_rows),
        "wgrad": lambda g, t: channel_wgrad(g, t.wgrad_filters, t.wgrad_slots, t.wgrad_images, t.wgrad_kh_rows),
    }
    gpu_templates: ClassVar[dict[str, Any]] = {"forward": channel_forward_gpu, "dgrad": channel_dgrad_gpu,
                                               "wgrad": channel_wgrad_gpu}
    # The GPU gradients need no more than the kept list: dense over (C, KH, KW), no derived buffers.
    gpu_buffers: ClassVar[dict[str, tuple[str, ...]]] = {"dgrad": ("kept",), "wgrad": ("kept",)}

    def supports(self, geometry: ConvGeometry) -> str | None:
        if geometry.kernel_w > 3 * geometry.stride:
            # The input gradient keeps at most 3 column-shifted copies of its scratch.
            return f"kernel width {geometry.kernel_w} with stride {geometry.stride}"
        if geometry.stride > 2:
            return f"stride {geometry.stride} (the fill stage handles 1 and 2)"
        return None

    def units(self, mask: torch.Tensor) -> int:
        return int(kept_filters(mask.detach().cpu()).sum())

    def unit_ids(self, weight_shape: tuple[int, ...]) -> torch.Tensor:
        filters = torch.arange(weight_shape[0]).view(-1, *([1] * (len(weight_shape) - 1)))
        return filters.expand(weight_shape)

    def default_tiles(self, geometry: ConvGeometry, target: Target) -> ChannelTiles:
        return ChannelTiles.default(geometry, target.num_cores, clzero=has_clzero(target.tvm))

    def knobs(self, geometry: ConvGeometry, which: str, tiles: ChannelTiles) -> dict[str, list[Any]]:
        return channel_knobs(geometry, which, tiles)

    def pack_with(self, geometry: ConvGeometry, tiles: ChannelTiles, mask: torch.Tensor,
                  capacity: int | None = None) -> ChannelFormat:
        return ChannelFormat.pack(mask, geometry, capacity)

    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return random_channel_mask(weight_shape, 0.4, generator)


FAMILIES.add("channel", ChannelFamily())
