"""What every GPU backend of a `SparseConv2d` shares: packing, the autograd function, the gate.

A device backend runs a layer's three GPU kernels (the family's GPU templates, tuned schedules
replayed when records have them) on a device: OpenCL through our own host (`opencl_backend.py`)
or CUDA through TVM's runtime on PyTorch's own CUDA tensors (`cuda_backend.py`). Subclasses say
how a forward keeps its inputs on the device and how the two gradients reuse them. Before a
geometry's kernels are first used they pass the same masked-dense gate as host kernels, on the
device (`gate`): TVM can miscompile data-dependent loops silently.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.runtime.gate import KernelGateError, reference, relative_error
from mest_compile.compiler.runtime.grad_subset import GradSubset, GradSubsets, NarrowedGradients
from mest_compile.compiler.runtime.records import TunedChoices, current_records
from mest_compile.compiler.runtime.skipped import SkippedKernels
from mest_compile.compiler.target import Target, as_target
from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.sparsity.module import SparseConv2d

_HANDLES = itertools.count()
_RTOL = 1e-4  # float32 sums of a few hundred products, as the host gate


@dataclass
class TransferStats(SkippedKernels, NarrowedGradients):
    """Bytes moved between host and device, index-buffer writes, kernel launches, and backward kernels skipped."""

    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    index_uploads: int = 0  # index buffers (re)written: at a pack, and those a mutation changed
    launches: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready counts."""
        return asdict(self)


@dataclass(frozen=True)
class FormatPacker:
    """Packs masks of one geometry for a device backend (what `PackCache` keys by `handle`)."""

    handle: str
    family: KernelFamily
    geometry: ConvGeometry

    def pack(self, mask: torch.Tensor) -> PackedFormat:
        """The GPU kernels' layout of `mask` (the portable forward layout; packed on the CPU, where
        formats keep their index tensors, whatever device the mask is on)."""
        return self.family.forward_format(self.geometry, mask.detach().cpu())


class DeviceConvBackend(ABC):
    """`SparseConv2d.backend` running a layer's GPU kernels on one device (see the module docstring)."""

    #: The TVM target kind this backend runs ("opencl", "cuda").
    kind: str = ""

    def __init__(self, family: KernelFamily, target: Any, records: TunedChoices | None = None) -> None:
        self.family = family
        self.target: Target = as_target(target)
        if self.target.tvm.kind.name != self.kind:
            raise MestError(f"target {self.target.key!r} is not a {self.kind} target")
        for which in PHASES:
            self.target.family.require(family, which)
        self.records = records if records is not None else current_records()
        self.stats = TransferStats()
        self.handle = f"{self.kind}-{family.name}#{next(_HANDLES)}"
        self.gate_errors: dict[ConvGeometry, dict[str, float]] = {}
        self._fmt: PackedFormat | None = None
        self._version = -1
        self._packings = 0
        self._grad_subsets = GradSubsets()

    # ---- what a device provides -----------------------------------------------------------
    @abstractmethod
    def build(self, geometry: ConvGeometry) -> None:
        """Compile the three kernels of `geometry` (called once per geometry, before the gate)."""

    @abstractmethod
    def forward(self, x: torch.Tensor, values: torch.Tensor, fmt: PackedFormat) -> tuple[torch.Tensor, Any]:
        """The forward's output and what the backward needs kept on the device."""

    @abstractmethod
    def backward(self, saved: Any, dy: torch.Tensor, fmt: PackedFormat, need_dx: bool, need_dv: bool,
                 subset: GradSubset | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The input gradient and the kept values' gradient (None where not needed; with `subset`,
        computed on its units only, `grad_subset.place`)."""

    # ---- shared ----------------------------------------------------------------------------
    def ready(self, geometry: ConvGeometry) -> None:
        """Build and gate `geometry`'s kernels on first use.

        Raises:
            KernelGateError: a kernel disagreed with masked dense on the device.
        """
        if geometry in self.gate_errors:
            return
        self.build(geometry)
        self.gate_errors[geometry] = errors = self.gate(geometry)
        bad = {which: err for which, err in errors.items() if not err <= _RTOL}
        if bad:
            worst = max(bad, key=bad.get)
            raise KernelGateError(f"{self.family.name} {worst} kernel on {self.target.key} is wrong on random data "
                                  f"(relative error {bad[worst]:.2e}) for {geometry}")

    def gate(self, geometry: ConvGeometry, batch: int = 3, seed: int = 0) -> dict[str, float]:
        """Each phase's relative error against masked dense, on a random legal mask with an empty unit."""
        gen = torch.Generator().manual_seed(seed)
        g = geometry
        weight = torch.randn(g.out_channels, g.in_channels, g.kernel_h, g.kernel_w, generator=gen)
        mask = self.family.random_mask(tuple(weight.shape), gen)
        x = torch.randn(batch, g.in_channels, g.in_h, g.in_w, generator=gen)
        dy = torch.randn(batch, g.out_channels, g.out_h, g.out_w, generator=gen)
        fmt = self.packer(g).pack(mask)
        device = self.device_of()
        xs = x.to(device).requires_grad_(True)
        ws = weight.to(device).requires_grad_(True)
        y = _DeviceConv.apply(xs, fmt.values(ws).contiguous(), self, fmt)  # not `conv`: that waits for this gate
        y.backward(dy.to(device))
        assert xs.grad is not None and ws.grad is not None
        got = {"forward": y.detach(), "dgrad": xs.grad, "wgrad": ws.grad}
        return {which: relative_error(got[which].detach().cpu(),
                                      reference(which, x, weight, mask, dy, g.stride, g.padding).detach())
                for which in PHASES}

    def device_of(self) -> torch.device:
        """Where this backend's tensors live (CPU for OpenCL: the host copies)."""
        return torch.device("cpu")

    def packer(self, geometry: ConvGeometry) -> FormatPacker:
        """What packs masks of `geometry` for these kernels."""
        return FormatPacker(f"{self.handle}:{geometry}", self.family, geometry)

    def conv(self, x: torch.Tensor, values: torch.Tensor, fmt: PackedFormat,
             subset: GradSubset | None = None) -> torch.Tensor:
        """`conv2d(x, weight * mask)` from the packed `values` (differentiable in `x` and `values`;
        the values' gradient on `subset`'s units only, when given)."""
        self.ready(fmt.geometry)
        return _DeviceConv.apply(x.contiguous(), values.contiguous(), self, fmt, subset)

    def _format(self, module: SparseConv2d, geometry: ConvGeometry) -> PackedFormat:
        if self._fmt is None or self._fmt.geometry != geometry or self._version != module.mask_version:
            self._fmt = self.packer(geometry).pack(module.mask)
            self._version = module.mask_version
            self._packings += 1
        return self._fmt

    def __call__(self, module: SparseConv2d, x: torch.Tensor) -> torch.Tensor:
        geometry = geometry_of(module, tuple(x.shape))
        fmt = self._format(module, geometry)
        self.stats.observe(module, x)
        pack = self.packer(geometry).pack
        subset = self._grad_subsets.get(module, self.family, pack, fmt, self._packings, self.stats)
        y = self.conv(x, fmt.values(module.weight), fmt, subset)
        if module.bias is not None:
            y = y + module.bias[None, :, None, None]
        return y


class _DeviceConv(torch.autograd.Function):
    """`conv2d(x, weight * mask)` as a function of `x` and the packed values, on a device."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, backend: DeviceConvBackend,
                fmt: PackedFormat, subset: GradSubset | None = None) -> torch.Tensor:
        y, ctx.saved = backend.forward(x, values, fmt)
        ctx.backend, ctx.fmt, ctx.subset = backend, fmt, subset
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        dx, dv = ctx.backend.backward(ctx.saved, dy.contiguous(), ctx.fmt, ctx.needs_input_grad[0],
                                      ctx.needs_input_grad[1], ctx.subset)
        return dx, dv, None, None, None


#: Device backends by the TVM target kind they run (each module registers its class; `device_backends.py` looks up).
DEVICE_BACKENDS: Registry[type[DeviceConvBackend]] = Registry("device backend")
