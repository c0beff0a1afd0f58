"""Plug compiled kernels into `SparseConv2d` modules (`module.backend(module, x)`).

A `BlockConvBackend` packs the module's mask once and repacks it in place whenever the module's
`mask_version` changes (a mutation). A mask that no longer fits the capacity gets new buffers
with more headroom; the kernels do not change either way (nnz is a runtime size), so no mutation
ever recompiles. Builds, reuses and repacks are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mest_compile.compiler.build import BlockKernels, KernelGateError, block_kernels
from mest_compile.compiler.formats.block import SCHEME, BlockFormat
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.ops import block_conv2d_packed

# Capacity headroom over the first mask's kept blocks: mutations regrow to the same bound, so
# a little slack absorbs rounding without reallocating.
_HEADROOM = 1.1


@dataclass
class BackendStats:
    packs: int = 0
    repacks: int = 0
    regrows: int = 0  # repacks that needed bigger buffers
    dense_fallbacks: int = 0


class BlockConvBackend:
    """Compiled forward/backward for one block-scheme `SparseConv2d` (batch size may vary)."""

    def __init__(self, target: str = "host") -> None:
        self.target = target
        self.stats = BackendStats()
        self._fmt: BlockFormat | None = None
        self._version = -1
        self._geometry: ConvGeometry | None = None
        self._failed: str | None = None

    # Packing reads the mask's structure (data-dependent): keep torch.compile out of it; the
    # compiled graph breaks here and resumes at the custom op.
    @torch.compiler.disable
    def _format(self, module: nn.Module, geo: ConvGeometry, kernels: BlockKernels) -> BlockFormat:
        if self._fmt is None or self._geometry != geo:
            kept = int(module.mask[::4].sum())
            self._fmt = kernels.pack(module.mask, capacity=max(1, int(kept * _HEADROOM)))
            self._geometry, self._version = geo, module.mask_version
            self.stats.packs += 1
        elif self._version != module.mask_version:
            if self._fmt.fits(module.mask):
                self._fmt.repack_(module.mask)
            else:
                kept = int(module.mask[::4].sum())
                self._fmt = kernels.pack(module.mask, capacity=int(kept * _HEADROOM) + 1)
                self.stats.regrows += 1
            self._version = module.mask_version
            self.stats.repacks += 1
        return self._fmt

    @torch.compiler.disable
    def _kernels(self, geo: ConvGeometry) -> BlockKernels | None:
        if self._failed is None:
            try:
                return block_kernels(geo, self.target)
            except KernelGateError as err:
                self._failed = str(err)
        return None

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        geo = ConvGeometry.of(tuple(x.shape), tuple(module.weight.shape), module.stride[0], module.padding[0])
        kernels = self._kernels(geo)
        if kernels is None:
            self.stats.dense_fallbacks += 1
            return module._conv_forward(x, module.weight * module.mask, module.bias)
        y = block_conv2d_packed(x, module.weight, self._format(module, geo, kernels), self.target)
        if module.bias is not None:
            y = y + module.bias[None, :, None, None]
        return y


def compilable(module: nn.Module) -> str | None:
    """Why `module` cannot use compiled block kernels, or None if it can."""
    scheme = getattr(getattr(module, "scheme", None), "name", None)
    if scheme != SCHEME:
        return f"scheme {scheme!r} has no compiled kernels yet"
    if module.groups != 1 or tuple(module.dilation) != (1, 1):
        return "grouped or dilated conv"
    if module.stride[0] != module.stride[1] or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return "asymmetric stride or non-zero padding mode"
    if module.padding[0] != module.padding[1] or module.stride[0] not in (1, 2):
        return "asymmetric padding or stride other than 1, 2"
    if module.weight.dtype != torch.float32 or module.weight.device.type != "cpu":
        return "not a float32 CPU weight"
    return None


def compile_block_layers(model: nn.Module, target: str = "host") -> dict[str, str]:
    """Give every compilable block-scheme `SparseConv2d` of `model` a compiled backend, in place.

    Returns:
        Module name -> "compiled" or the reason it stays on the masked dense path.
    """
    report = {}
    for name, module in model.named_modules():
        if not hasattr(module, "mask") or not hasattr(module, "backend"):
            continue
        reason = compilable(module)
        if reason is None:
            module.backend = BlockConvBackend(target)
            report[name] = "compiled"
        else:
            report[name] = reason
    return report
