"""Which device backend runs a target's kernels: OpenCL targets through our OpenCL host, CUDA targets
on PyTorch's CUDA tensors (each backend module registers itself in `DEVICE_BACKENDS`)."""

from __future__ import annotations

from mest_compile.compiler.families import KernelFamily
from mest_compile.compiler.runtime import cuda_backend, opencl_backend  # noqa: F401  (they register)
from mest_compile.compiler.runtime.device_backend import DEVICE_BACKENDS, DeviceConvBackend
from mest_compile.compiler.target import Target

_SHARED: dict[tuple[str, str], DeviceConvBackend] = {}


def runs_on_device(target: Target) -> bool:
    """Whether `target`'s kernels run through a device backend here (not as host functions)."""
    return target.tvm.kind.name in DEVICE_BACKENDS


def device_backend(family: KernelFamily, target: Target) -> DeviceConvBackend:
    """A new device backend of `family` for `target` (one per layer: each keeps its layer's packing)."""
    return DEVICE_BACKENDS.get(target.tvm.kind.name)(family, target)


def shared_device_backend(family: KernelFamily, target: Target) -> DeviceConvBackend:
    """The process's device backend of `family` on `target` (what `sparse_conv2d` calls)."""
    key = (family.name, target.key)
    if key not in _SHARED:
        _SHARED[key] = device_backend(family, target)
    return _SHARED[key]
