"""A minimal OpenCL host in Python: devices, programs, buffers, launches (ctypes, no pip dependency).

The PyPI TVM runtime has no OpenCL, so the kernels TVM generates for Mali and Adreno are launched
here: find a device, build a program from source, move numpy / CPU torch arrays in and out,
launch a kernel with global and local sizes, and time it with profiling events.

Example:
    >>> ctx = Context()                                                    # doctest: +SKIP
    >>> program = ctx.build("__kernel void twice(__global float* a) { a[get_global_id(0)] *= 2; }")
    >>> buf = ctx.buffer(np.arange(4, dtype=np.float32))
    >>> ctx.launch(program.kernel("twice"), [buf], global_size=(4,))
    >>> buf.read()
    array([0., 2., 4., 6.], dtype=float32)
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mest_compile.compiler.devices import opencl_api as api
from mest_compile.compiler.devices.arrays import ArrayLike, as_numpy
from mest_compile.compiler.devices.opencl_api import OpenCLBuildError, OpenCLError, check, cl, create, release

__all__ = ["Buffer", "Context", "Device", "Kernel", "OpenCLBuildError", "OpenCLError", "Program", "devices"]


@dataclass(frozen=True)
class Device:
    """An OpenCL device as its driver describes it."""

    handle: int
    platform: str
    name: str
    version: str
    max_work_group_size: int


def devices() -> list[Device]:
    """Every device of every installed platform; empty when no driver (ICD) is installed.

    Raises:
        OpenCLError: the ICD loader itself is missing.
    """
    lib, count = cl(), api.U32()
    code = lib.clGetPlatformIDs(0, None, ctypes.byref(count))
    if code == api.PLATFORM_NOT_FOUND_KHR or count.value == 0:
        return []
    check(code, "clGetPlatformIDs")
    platforms = (api.VOIDP * count.value)()
    check(lib.clGetPlatformIDs(count.value, platforms, None), "clGetPlatformIDs")
    found = []
    for platform in (int(p or 0) for p in platforms):
        n = api.U32()
        if lib.clGetDeviceIDs(platform, api.DEVICE_TYPE_ALL, 0, None, ctypes.byref(n)) != 0 or n.value == 0:
            continue  # a platform without devices (e.g. a GPU driver on a machine without the GPU)
        ids = (api.VOIDP * n.value)()
        check(lib.clGetDeviceIDs(platform, api.DEVICE_TYPE_ALL, n.value, ids, None), "clGetDeviceIDs")
        platform_name = api.info_text(lib.clGetPlatformInfo, platform, api.PLATFORM_NAME)
        for dev in (int(d or 0) for d in ids):
            group = api.SIZE()
            param, size = api.DEVICE_MAX_WORK_GROUP_SIZE, ctypes.sizeof(group)
            check(lib.clGetDeviceInfo(dev, param, size, ctypes.byref(group), None), "clGetDeviceInfo")
            name, version = (api.info_text(lib.clGetDeviceInfo, dev, p) for p in (api.DEVICE_NAME, api.DEVICE_VERSION))
            found.append(Device(dev, platform_name, name, version, int(group.value)))
    return found


class Buffer:
    """A device buffer of one shape and dtype (`Context.buffer` copies an array in, `Context.empty`
    leaves it uninitialised); `write()` refills it, `read()` copies it back."""

    def __init__(self, context: Context, shape: Sequence[int], dtype: Any, host: np.ndarray | None = None) -> None:
        self.context, self.shape, self.dtype, self.handle = context, tuple(shape), np.dtype(dtype), 0
        # OpenCL rejects zero-sized buffers; an empty array (a mask without nonzeros) gets one
        # element that no kernel reads.
        size = max(self.nbytes, self.dtype.itemsize)
        copy = host is not None and host.nbytes > 0
        flags = api.MEM_READ_WRITE | (api.MEM_COPY_HOST_PTR if copy else 0)
        data = host.ctypes.data_as(api.VOIDP) if copy else None
        self.handle = create(cl().clCreateBuffer, context.handle, flags, size, data, what="clCreateBuffer")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def write(self, array: ArrayLike) -> None:
        """Copy `array` (this buffer's shape and dtype) into the buffer (blocking)."""
        host = as_numpy(array)
        if host.shape != self.shape or host.dtype != self.dtype:
            raise OpenCLError(f"writing a {host.shape} {host.dtype} array into a {self.shape} {self.dtype} buffer")
        if host.nbytes:
            ptr = host.ctypes.data_as(api.VOIDP)
            code = cl().clEnqueueWriteBuffer(self.context.queue, self.handle, 1, 0, host.nbytes, ptr, 0, None, None)
            check(code, "clEnqueueWriteBuffer")

    def read(self) -> np.ndarray:
        """The buffer's contents as a new numpy array (waits for the queued work)."""
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            ptr = out.ctypes.data_as(api.VOIDP)
            code = cl().clEnqueueReadBuffer(self.context.queue, self.handle, 1, 0, out.nbytes, ptr, 0, None, None)
            check(code, "clEnqueueReadBuffer")
        return out

    def __del__(self) -> None:
        release("MemObject", getattr(self, "handle", 0))


@dataclass
class Kernel:
    """A kernel object; its arguments are set at each launch."""

    handle: int
    name: str

    def __del__(self) -> None:
        release("Kernel", self.handle)


class Program:
    """A program built for one context's device."""

    def __init__(self, context: Context, handle: int) -> None:
        self.context, self.handle = context, handle

    def kernel(self, name: str) -> Kernel:
        """The `__kernel` called `name`."""
        return Kernel(create(cl().clCreateKernel, self.handle, name.encode(), what=f"kernel {name!r}"), name)

    def __del__(self) -> None:
        release("Program", getattr(self, "handle", 0))


class Context:
    """A context and an in-order command queue with profiling, on one device.

    Args:
        device: a `Device` from `devices()`; default: the first one found.

    Raises:
        OpenCLError: no OpenCL platform or device is installed.
    """

    def __init__(self, device: Device | None = None) -> None:
        self.handle = self.queue = 0
        if device is None:
            found = devices()
            if not found:
                raise OpenCLError(
                    "no OpenCL platform found: install an OpenCL driver (the Debian package "
                    "pocl-opencl-icd gives a CPU device)"
                )
            device = found[0]
        self.device, lib = device, cl()
        ids = (api.VOIDP * 1)(device.handle)
        self.handle = create(lib.clCreateContext, None, 1, ids, None, None, what="clCreateContext")
        props = api.QUEUE_PROFILING_ENABLE
        self.queue = create(lib.clCreateCommandQueue, self.handle, device.handle, props, what="clCreateCommandQueue")

    def build(self, source: str, options: str = "") -> Program:
        """Compile `source` for the device.

        Raises:
            OpenCLBuildError: the driver rejected the source (first error in the message, the
                whole build log in `.log`).
        """
        lib, text = cl(), ctypes.c_char_p(source.encode())
        handle = create(lib.clCreateProgramWithSource, self.handle, 1, ctypes.byref(text), None, what="clCreateProgram")
        program = Program(self, handle)
        ids = (api.VOIDP * 1)(self.device.handle)
        if lib.clBuildProgram(handle, 1, ids, options.encode(), None, None) != 0:
            dev = self.device.handle
            getter = lambda h, *rest: lib.clGetProgramBuildInfo(h, dev, *rest)  # noqa: E731
            log = api.info_text(getter, handle, api.PROGRAM_BUILD_LOG)
            lines = log.splitlines() or ["(empty build log)"]
            first = next((line for line in lines if "error" in line), lines[0])
            raise OpenCLBuildError(f"OpenCL build failed on {self.device.name}: {first.strip()}", log)
        return program

    def buffer(self, array: ArrayLike) -> Buffer:
        """A device buffer initialised with `array` (numpy or CPU torch)."""
        host = as_numpy(array)
        return Buffer(self, host.shape, host.dtype, host)

    def empty(self, shape: Sequence[int], dtype: Any) -> Buffer:
        """An uninitialised device buffer (what a kernel writes)."""
        return Buffer(self, shape, dtype)

    def launch(
        self,
        kernel: Kernel,
        args: Sequence[Buffer | np.generic],
        global_size: Sequence[int],
        local_size: Sequence[int] | None = None,
    ) -> float:
        """Run `kernel` once and wait for it; returns its device time in seconds.

        Args:
            args: buffers and numpy scalars (`np.int32(n)`: the width must match the kernel's).
            global_size: work items per dimension (multiples of `local_size`).
            local_size: work-group size per dimension, or None to let the driver choose.
        """
        lib = cl()
        for index, arg in enumerate(args):
            if isinstance(arg, Buffer):
                value: Any = api.VOIDP(arg.handle)
                size, ptr = ctypes.sizeof(value), ctypes.byref(value)
            elif isinstance(arg, np.generic):
                value = np.array(arg)
                size, ptr = value.nbytes, value.ctypes.data_as(api.VOIDP)
            else:
                kind = type(arg).__name__
                raise OpenCLError(f"{kernel.name} argument {index}: pass a Buffer or a numpy scalar, not {kind}")
            check(lib.clSetKernelArg(kernel.handle, index, size, ptr), f"{kernel.name} argument {index}")
        dims = len(global_size)
        grid = (api.SIZE * dims)(*global_size)
        group = (api.SIZE * dims)(*local_size) if local_size is not None else None
        event = api.VOIDP()
        queue, handle = self.queue, kernel.handle
        code = lib.clEnqueueNDRangeKernel(queue, handle, dims, None, grid, group, 0, None, ctypes.byref(event))
        check(code, f"launching {kernel.name}")
        try:
            check(lib.clWaitForEvents(1, ctypes.byref(event)), f"waiting for {kernel.name}")
            start, end = api.U64(), api.U64()
            lib.clGetEventProfilingInfo(event, api.PROFILING_START, 8, ctypes.byref(start), None)
            lib.clGetEventProfilingInfo(event, api.PROFILING_END, 8, ctypes.byref(end), None)
        finally:
            release("Event", event.value)
        return max(0, end.value - start.value) * 1e-9

    def __del__(self) -> None:
        release("CommandQueue", getattr(self, "queue", 0))
        release("Context", getattr(self, "handle", 0))
