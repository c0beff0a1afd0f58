"""Training on an OpenCL device: a `SparseConv2d` backend whose forward, input gradient and weight
gradient are the family's GPU kernels, compiled for a mali/adreno preset and launched by our
OpenCL host (`opencl_tvm.py`).

Arrays go to the device and back on every call (numpy in, numpy out), which is what a phone
without a shared-memory torch would do too; it is slow on PoCL and exists to run real training
steps through the OpenCL kernels. The weight gradient is computed for the kept values only and
reaches the dense weight through the differentiable gather of `fmt.values`, so it is exactly
zero outside the mask.
"""

from __future__ import annotations

from typing import Any

import torch

from mest_compile.compiler.devices.opencl import Context
from mest_compile.compiler.devices.opencl_tvm import OpenCLFunction, compile_opencl
from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.target_families import family_of
from mest_compile.sparsity.module import SparseConv2d


#: How GPU kernels are templated and scheduled (the same kernels a `mali` / `adreno` build makes).
_GPU = family_of("gpu")


class OpenCLConvBackend:
    """`SparseConv2d.backend` running the layer's three kernels on an OpenCL device.

    Example:
        >>> layer.backend = OpenCLConvBackend(family_for("block"), "mali")   # doctest: +SKIP
    """

    def __init__(self, family: KernelFamily, preset: str = "mali", context: Context | None = None) -> None:
        self.family = family
        self.preset = preset
        self.context = context or Context()
        self._functions: dict[ConvGeometry, dict[str, OpenCLFunction]] = {}
        self._fmt: PackedFormat | None = None
        self._version = -1

    def functions(self, geometry: ConvGeometry) -> dict[str, OpenCLFunction]:
        """The compiled kernels of `geometry` (built on first use)."""
        if geometry not in self._functions:
            self._functions[geometry] = {
                which: compile_opencl(_GPU.schedule(_GPU.template(self.family, geometry, which, None), which)["main"],
                                      self.preset, self.context)
                for which in PHASES
            }
        return self._functions[geometry]

    def _format(self, module: SparseConv2d, geometry: ConvGeometry) -> PackedFormat:
        if self._fmt is None or self._fmt.geometry != geometry or self._version != module.mask_version:
            self._fmt = self.family.forward_format(geometry, module.mask)
            self._version = module.mask_version
        return self._fmt

    def run(self, which: str, x: torch.Tensor, values: torch.Tensor, dy: torch.Tensor | None,
            fmt: PackedFormat) -> torch.Tensor:
        """Kernel `which` on the device; returns its output."""
        args = self.family.gpu_kernel_args(which, x.detach(), values.detach(), dy, fmt)
        *_, out = self.functions(fmt.geometry)[which](*args)
        return torch.from_numpy(out)

    def __call__(self, module: SparseConv2d, x: torch.Tensor) -> torch.Tensor:
        fmt = self._format(module, geometry_of(module, tuple(x.shape)))
        y = _DeviceConv.apply(x.contiguous(), fmt.values(module.weight).contiguous(), self, fmt)
        if module.bias is not None:
            y = y + module.bias[None, :, None, None]
        return y


class _DeviceConv(torch.autograd.Function):
    """`conv2d(x, weight * mask)` as a function of `x` and the packed values, on the device."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, backend: OpenCLConvBackend,
                fmt: PackedFormat) -> torch.Tensor:
        ctx.save_for_backward(x, values)
        ctx.backend, ctx.fmt = backend, fmt
        return backend.run("forward", x, values, None, fmt)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, values = ctx.saved_tensors
        dy = dy.contiguous()
        dx = ctx.backend.run("dgrad", x, values, dy, ctx.fmt) if ctx.needs_input_grad[0] else None
        dv = ctx.backend.run("wgrad", x, values, dy, ctx.fmt) if ctx.needs_input_grad[1] else None
        return dx, dv, None, None
