"""Training on an OpenCL device (mali, adreno presets): the GPU kernels launched by our OpenCL host.

Device buffers persist and only what changed moves: a layer's index buffers are uploaded when
its mask is packed and afterwards only those a mutation changed; each forward uploads the input
and the packed values once and keeps them on the device for both gradient kernels; the backward
uploads the output gradient once for both. Each output is read back once. `TransferStats`
counts every byte. The weight gradient is computed for the kept values only and reaches the
dense weight through the differentiable gather of `fmt.values`, so it is zero outside the mask;
with a layer's `weight_grad_mask` only for the units it touches (`grad_subset.py`), whose index
buffers the device holds beside the layer's.
"""

from __future__ import annotations

from typing import Any

import torch

from mest_compile.compiler.devices.opencl import Buffer, Context
from mest_compile.compiler.devices.opencl_tvm import OpenCLFunction, compile_opencl
from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.compiled import tuned_schedules
from mest_compile.compiler.runtime.device_backend import DEVICE_BACKENDS, DeviceConvBackend
from mest_compile.compiler.runtime.grad_subset import GradSubset, place
from mest_compile.compiler.runtime.records import TunedChoices


class OpenCLConvBackend(DeviceConvBackend):
    """A layer's kernels on an OpenCL device (see the module docstring).

    Example:
        >>> layer.backend = OpenCLConvBackend(family_for("block"), "mali")   # doctest: +SKIP
    """

    kind = "opencl"

    def __init__(self, family: KernelFamily, target: Any = "mali", context: Context | None = None,
                 records: TunedChoices | None = None) -> None:
        super().__init__(family, target, records)
        self.context = context or Context()
        self._functions: dict[ConvGeometry, dict[str, OpenCLFunction]] = {}
        # What the device index buffers hold, by (slot, name): the layer's packing ("layer") and its
        # gradient mask's ("grad", `grad_subset.py`).
        self._host: dict[tuple[str, str], torch.Tensor] = {}
        self._device: dict[tuple[str, str], Buffer] = {}

    def build(self, geometry: ConvGeometry) -> None:
        _, mods, _ = tuned_schedules(self.family, geometry, self.target, self.records)
        preset = self.target.preset
        self._functions[geometry] = {which: compile_opencl(mods[which], preset, self.context) for which in PHASES}

    def upload(self, tensor: torch.Tensor) -> Buffer:
        """A device copy of `tensor` (counted)."""
        buffer = self.context.buffer(tensor.detach())
        self.stats.uploaded_bytes += buffer.nbytes
        return buffer

    def download(self, buffer: Buffer) -> torch.Tensor:
        """A host copy of `buffer` (counted)."""
        self.stats.downloaded_bytes += buffer.nbytes
        return torch.from_numpy(buffer.read())

    def index(self, fmt: PackedFormat, slot: str = "layer") -> dict[str, Buffer]:
        """`fmt`'s index buffers on the device, held in `slot`; only those that differ from what it
        holds are written."""
        for name, tensor in self.family.gpu_index_buffers(fmt).items():
            key = (slot, name)
            old = self._host.get(key)
            if old is not None and old.shape == tensor.shape and torch.equal(old, tensor):
                continue
            if old is not None and old.shape == tensor.shape:
                self._device[key].write(tensor)
                self.stats.uploaded_bytes += self._device[key].nbytes
            else:
                self._device[key] = self.upload(tensor)
            self._host[key] = tensor.clone()
            self.stats.index_uploads += 1
        # A snapshot: a later repack must not change a pending backward's buffers.
        return {name: buffer for (held, name), buffer in self._device.items() if held == slot}

    def _launch(self, which: str, fmt: PackedFormat, first: Buffer, second: Buffer, index: dict[str, Buffer],
                out_shape: tuple[int, ...]) -> torch.Tensor:
        out = self.context.empty(out_shape, "float32")
        buffers = [index[name] for name in self.family.gpu_phase_buffers(which)]
        self._functions[fmt.geometry][which].launch(first, second, *buffers, out)
        self.stats.launches += 1
        return self.download(out)

    def forward(self, x: torch.Tensor, values: torch.Tensor, fmt: PackedFormat) -> tuple[torch.Tensor, Any]:
        geo = fmt.geometry
        index = self.index(fmt)
        xb, vb = self.upload(x), self.upload(values)
        y = self._launch("forward", fmt, xb, vb, index, (x.shape[0], geo.out_channels, geo.out_h, geo.out_w))
        return y, (xb, vb, index, tuple(x.shape), tuple(values.shape))

    def backward(self, saved: Any, dy: torch.Tensor, fmt: PackedFormat, need_dx: bool, need_dv: bool,
                 subset: GradSubset | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        xb, vb, index, x_shape, values_shape = saved
        dyb = self.upload(dy)
        dx = self._launch("dgrad", fmt, dyb, vb, index, x_shape) if need_dx else None
        if not need_dv:
            return dx, None
        if subset is None:
            return dx, self._launch("wgrad", fmt, xb, dyb, index, values_shape)
        shape = tuple(subset.slots.shape)
        part = (self._launch("wgrad", subset.fmt, xb, dyb, self.index(subset.fmt, "grad"), shape) if subset.units
                else torch.empty(shape))
        return dx, place(part, subset.slots, values_shape)


DEVICE_BACKENDS.add("opencl", OpenCLConvBackend)
