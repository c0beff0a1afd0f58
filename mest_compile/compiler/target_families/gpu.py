"""GPU targets (OpenCL on Mali / Adreno, CUDA): the families' GPU kernels, bound to work groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tvm
from tvm import s_tir, tirx

from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.target_families import TARGET_FAMILIES, TargetFamily
from mest_compile.schedules.gpu import DEFAULT_THREADS, bind_block, bind_kernel, gpu_spaces

#: The block every GPU kernel keeps its work in (complete, or a reduction for weight gradients).
BLOCK = "conv"

if TYPE_CHECKING:
    import torch

    from mest_compile.compiler.families import KernelFamily, PackedFormat
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.target import Target


class GpuFamily(TargetFamily):
    """GPU targets: one template per kernel (no tile knobs), work items bound to the `conv` block.

    Every phase a family has a GPU template for is compiled and tuned: forward, input gradient
    and masked weight gradient.
    """

    name = "gpu"
    marks_scheduled = True

    def phases(self, family: KernelFamily) -> tuple[str, ...]:
        return tuple(w for w in PHASES if w in family.gpu_templates)

    def template(self, family: KernelFamily, geometry: ConvGeometry, which: str, tiles: Any) -> tirx.PrimFunc:
        self.require(family, which)
        return family.gpu_templates[which](geometry)

    def schedule(self, func: tirx.PrimFunc, which: str) -> tvm.IRModule:
        return tvm.IRModule({"main": bind_kernel(func, BLOCK)})

    def kernel_args(self, family: KernelFamily, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: PackedFormat) -> list[torch.Tensor]:
        return family.gpu_kernel_args(which, x, fmt.values(weight).contiguous(), dy, fmt)

    def spaces(self, func: tirx.PrimFunc, which: str, target: Target) -> list[Any]:
        return gpu_spaces(func, BLOCK, int(target.tvm.attrs.get("max_num_threads", DEFAULT_THREADS)))

    def default_schedule(self, sch: s_tir.Schedule, which: str) -> None:
        bind_block(sch, BLOCK, DEFAULT_THREADS)


TARGET_FAMILIES.add("gpu", GpuFamily())
