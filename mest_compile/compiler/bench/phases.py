"""One call per training phase of a compiled layer, with what training pays around each kernel."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mest_compile.compiler.families import KernelSet, PackedFormat
from mest_compile.compiler.runtime.compiled import CompiledKernels


def phase_calls(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: PackedFormat,
                kernels: KernelSet | CompiledKernels) -> dict[str, Callable[[], object]]:
    """{"fwd", "dgrad", "wgrad"} -> a thunk running that kernel once, for the benchmark.

    Each thunk runs one kernel with what training pays around it (the value gather, the output
    allocation, scattering the weight gradient into the dense gradient), so its time compares
    with `F.conv2d`, `conv2d_input` and `conv2d_weight` of the dense layer.
    """
    family = kernels.family
    forward, dgrad, wgrad = (family.phase_buffers(which, fmt) for which in ("forward", "dgrad", "wgrad"))
    values_shape = fmt.values(weight).shape

    def run_forward() -> None:
        kernels.forward(x, fmt.values(weight), *forward, x.new_empty(dy.shape))

    def run_dgrad() -> None:
        kernels.dgrad(dy, fmt.values(weight), *dgrad, torch.empty_like(x))

    def run_wgrad() -> None:
        dv = x.new_empty(values_shape)
        kernels.wgrad(x, dy, *wgrad, dv)
        fmt.dense_grad(dv, weight)

    return {"fwd": run_forward, "dgrad": run_dgrad, "wgrad": run_wgrad}
