"""Training on a CUDA GPU: the GPU kernels run by TVM's CUDA runtime on PyTorch's own CUDA tensors.

Every tensor a kernel reads or writes is a CUDA tensor handed to TVM through DLPack (a view, no
copy): the input, the packed values (a differentiable gather on the GPU), the output gradient and
the outputs, allocated by PyTorch. A layer's index buffers move to the GPU once per packing. The
kernels are compiled for the architecture of the GPU they run on (`sm_XY` from the device), so
the `cuda` preset's `sm_90` does not refuse an A100. TVM launches on the device's default stream,
which PyTorch's default stream is ordered with; a caller on a side stream synchronises itself.
"""

from __future__ import annotations

from typing import Any

import torch
import tvm

from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.compiled import tuned_schedules
from mest_compile.compiler.runtime.device_backend import DEVICE_BACKENDS, DeviceConvBackend
from mest_compile.compiler.runtime.grad_subset import GradSubset, place
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.target import Target, as_target
from mest_compile.errors import MestError


def device_target(target: Target, index: int = 0) -> Target:
    """`target` with the architecture of CUDA GPU `index` (the preset's when no GPU answers)."""
    device = tvm.cuda(index)
    if not device.exist:
        raise MestError("no CUDA GPU: TVM's CUDA runtime finds no device (it needs NVIDIA's driver, libcuda.so.1)")
    arch = "sm_" + device.compute_version.replace(".", "")
    if str(target.tvm.attrs.get("arch", "")) == arch or target.preset is None:
        return target
    return as_target(dict(target.preset.target, arch=arch))


class CudaConvBackend(DeviceConvBackend):
    """A layer's kernels on a CUDA GPU, on CUDA tensors (see the module docstring).

    Example:
        >>> layer.cuda().backend = CudaConvBackend(family_for("block"))   # doctest: +SKIP
    """

    kind = "cuda"

    def __init__(self, family: KernelFamily, target: Any = "cuda", records: TunedChoices | None = None,
                 device_index: int = 0) -> None:
        super().__init__(family, target, records)
        self.device_index = device_index
        self._kernels: dict[ConvGeometry, dict[str, Any]] = {}
        # The index buffers on the GPU: of the layer's packing, and of its gradient mask's (`grad_subset.py`).
        self._index: dict[str, tuple[PackedFormat | None, dict[str, torch.Tensor]]] = {}

    def device_of(self) -> torch.device:
        return torch.device("cuda", self.device_index)

    def build(self, geometry: ConvGeometry) -> None:
        target = device_target(self.target, self.device_index)
        _, mods, _ = tuned_schedules(self.family, geometry, target, self.records)
        kernels = {}
        for which in PHASES:
            func = mods[which]["main"]
            symbol = str(func.attrs["global_symbol"]) if func.attrs and "global_symbol" in func.attrs else "main"
            kernels[which] = tvm.compile(mods[which], target=target.tvm)[symbol]
        self._kernels[geometry] = kernels

    def index(self, fmt: PackedFormat, slot: str = "layer") -> dict[str, torch.Tensor]:
        """`fmt`'s index buffers on the GPU (moved once per packing), held in `slot`."""
        held, buffers = self._index.get(slot, (None, {}))
        if held is not fmt:
            device = self.device_of()
            buffers = {name: t.to(device) for name, t in self.family.gpu_index_buffers(fmt).items()}
            self._index[slot] = (fmt, buffers)
            self.stats.index_uploads += len(buffers)
            self.stats.uploaded_bytes += sum(t.numel() * t.element_size() for t in buffers.values())
        return buffers

    def _launch(self, which: str, fmt: PackedFormat, first: torch.Tensor, second: torch.Tensor,
                index: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        args = [first, second, *(index[name] for name in self.family.gpu_phase_buffers(which)), out]
        self._kernels[fmt.geometry][which](*(tvm.runtime.from_dlpack(a) for a in args))
        self.stats.launches += 1
        return out

    def forward(self, x: torch.Tensor, values: torch.Tensor, fmt: PackedFormat) -> tuple[torch.Tensor, Any]:
        if x.device != self.device_of() or values.device != self.device_of():
            raise MestError(f"CUDA kernels take tensors on {self.device_of()}, got {x.device} and {values.device}")
        geo = fmt.geometry
        index = self.index(fmt)
        y = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
        return self._launch("forward", fmt, x, values, index, y), (x, values, index)

    def backward(self, saved: Any, dy: torch.Tensor, fmt: PackedFormat, need_dx: bool, need_dv: bool,
                 subset: GradSubset | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, values, index = saved
        dx = self._launch("dgrad", fmt, dy, values, index, torch.empty_like(x)) if need_dx else None
        if not need_dv:
            return dx, None
        if subset is None:
            return dx, self._launch("wgrad", fmt, x, dy, index, torch.empty_like(values))
        part = values.new_empty(subset.slots.shape)
        if subset.units:
            self._launch("wgrad", subset.fmt, x, dy, self.index(subset.fmt, "grad"), part)
        return dx, place(part, subset.slots, values.shape)


DEVICE_BACKENDS.add("cuda", CudaConvBackend)
