"""Plug compiled kernels into `SparseConv2d` modules (`module.backend(module, x)`).

A `CompiledConvBackend` packs the module's mask on first use and, whenever the module's
`mask_version` changes (a mutation), repacks it in place or rebuilds per the `RecompilePolicy`.
Builds, reuses, repacks and rebuilds are counted. A layer whose kernels failed the correctness
gate runs the masked dense conv and says why. A module's `weight_grad_mask` (set by an algorithm,
e.g. SparCL's gradient masking) is packed as the weight-gradient kernel's structure when it is a
new tensor or the mask changed (`grad_subset.py`), so only those gradients are computed.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from mest_compile.compiler.families import KernelFamily, PackedFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.cache import CACHE, KernelCache
from mest_compile.compiler.runtime.compiled import CompiledKernels
from mest_compile.compiler.runtime.gate import KernelGateError
from mest_compile.compiler.runtime.grad_subset import GradSubsets, NarrowedGradients
from mest_compile.compiler.runtime.policy import RecompilePolicy, refill
from mest_compile.compiler.runtime.records import TunedChoices, current_records
from mest_compile.compiler.runtime.skipped import SkippedKernels
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import SparseConv2d


@dataclass
class BackendStats(SkippedKernels, NarrowedGradients):
    """What one layer's backend did (and the backward kernels it did not need to run)."""

    packs: int = 0
    repacks: int = 0  # mutations absorbed in place
    rebuilds: int = 0  # mutations that needed fresh buffers (overflow, padding, drift)
    overflows: int = 0
    dense_calls: int = 0  # calls that ran the masked dense conv (gate failure)

    def to_dict(self) -> dict[str, int]:
        """JSON-ready counts."""
        return asdict(self)


def geometry_of(module: SparseConv2d, x_shape: tuple[int, ...]) -> ConvGeometry:
    """The layer geometry of `module` for an input of `x_shape` (explicit, symmetric padding)."""
    padding = module.padding
    if isinstance(padding, str):
        raise MestError(f"compiled kernels need explicit padding, got padding={padding!r}")
    return ConvGeometry.of(x_shape, tuple(module.weight.shape), module.stride[0], padding[0])


class CompiledConvBackend:
    """Compiled forward/backward for one `SparseConv2d` (any batch size).

    The tuning records in effect when the backend is made are the ones its kernels are built with,
    whenever that happens (the first call, or a new input size).
    """

    def __init__(self, family: KernelFamily, target: Target, policy: RecompilePolicy | None = None,
                 cache: KernelCache | None = None) -> None:
        self.family = family
        self.target = target
        self.records: TunedChoices | None = current_records()
        self.cache = cache if cache is not None else CACHE
        self.policy = policy or RecompilePolicy()
        self.stats = BackendStats()
        self.failure: str | None = None
        self._fmt: PackedFormat | None = None
        self._built_signature: tuple = ()
        self._version = -1
        self._grad_subsets = GradSubsets()

    def kernels(self, geometry: ConvGeometry) -> CompiledKernels:
        """The gated kernels of `geometry` (built on first use).

        Raises:
            KernelGateError: they failed the correctness gate.
        """
        return self.cache.kernels_for(self.family, geometry, self.target, self.records)

    def _format(self, module: SparseConv2d, kernels: CompiledKernels) -> PackedFormat:
        fmt = self._fmt
        if fmt is None or fmt.geometry != kernels.geometry:
            self._rebuild(module, kernels)
            self.stats.packs += 1
        elif self._version != module.mask_version:
            decision = refill(self.policy, fmt, module.mask, self.family.units(module.mask), self._built_signature)
            if decision == "reuse":
                self.stats.repacks += 1
            else:
                self.stats.overflows += int(decision == "overflow")
                self._rebuild(module, kernels)
        self._version = module.mask_version
        assert self._fmt is not None
        return self._fmt

    def _rebuild(self, module: SparseConv2d, kernels: CompiledKernels) -> None:
        if self._fmt is not None:
            self.stats.rebuilds += 1
        units = self.family.units(module.mask)
        self._fmt = kernels.pack(module.mask, capacity=self.policy.capacity(units))
        self._built_signature = self._fmt.signature()

    def __call__(self, module: SparseConv2d, x: torch.Tensor) -> torch.Tensor:
        geometry = geometry_of(module, tuple(x.shape))
        if self.failure is None:
            try:
                kernels = self.kernels(geometry)
            except KernelGateError as err:
                self.failure = str(err)
                warnings.warn(f"{err}; this layer uses the masked dense conv", stacklevel=2)
        if self.failure is not None:
            self.stats.dense_calls += 1
            return module._conv_forward(x, module.weight * module.mask, module.bias)
        self.stats.observe(module, x)
        fmt = self._format(module, kernels)
        packing = self.stats.packs + self.stats.repacks + self.stats.rebuilds
        subset = self._grad_subsets.get(module, self.family, kernels.pack, fmt, packing, self.stats)
        y = kernels.conv(x, module.weight, fmt, subset)
        if module.bias is not None:
            y = y + module.bias[None, :, None, None]
        return y

    @property
    def format(self) -> PackedFormat | None:
        """The layer's current packed format (None before the first call)."""
        return self._fmt
