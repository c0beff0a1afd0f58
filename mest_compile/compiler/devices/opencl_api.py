"""The slice of the OpenCL 1.2 C API our host uses, bound with ctypes to `libOpenCL.so.1`.

`libOpenCL.so.1` is the ICD loader (Debian `ocl-icd-libopencl1`); it dispatches to whatever
drivers are installed (`pocl-opencl-icd` on a CPU, the vendor's on a phone or board). Handles are
plain integers; every call is checked, and failures raise `OpenCLError` with the CL error name.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from mest_compile.errors import MestError

VOIDP, SIZE, U32, U64, I32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32
_PI32, _PU32, _PSIZE = ctypes.POINTER(I32), ctypes.POINTER(U32), ctypes.POINTER(SIZE)

DEVICE_TYPE_ALL, DEVICE_NAME, DEVICE_VERSION, DEVICE_MAX_WORK_GROUP_SIZE = 0xFFFFFFFF, 0x102B, 0x102F, 0x1004
PLATFORM_NAME, PROGRAM_BUILD_LOG, QUEUE_PROFILING_ENABLE = 0x0902, 0x1183, 1 << 1
MEM_READ_WRITE, MEM_COPY_HOST_PTR, PROFILING_START, PROFILING_END = 1, 1 << 5, 0x1282, 0x1283
PLATFORM_NOT_FOUND_KHR = -1001  # the loader's answer when no driver (ICD) is installed

_ERRORS = {
    -1: "DEVICE_NOT_FOUND", -5: "OUT_OF_RESOURCES", -11: "BUILD_PROGRAM_FAILURE", -30: "INVALID_VALUE",
    -36: "INVALID_COMMAND_QUEUE", -38: "INVALID_MEM_OBJECT", -46: "INVALID_KERNEL_NAME", -48: "INVALID_KERNEL",
    -49: "INVALID_ARG_INDEX", -50: "INVALID_ARG_VALUE", -51: "INVALID_ARG_SIZE", -52: "INVALID_KERNEL_ARGS",
    -54: "INVALID_WORK_GROUP_SIZE", -55: "INVALID_WORK_ITEM_SIZE", -61: "INVALID_BUFFER_SIZE",
    -63: "INVALID_GLOBAL_WORK_SIZE", PLATFORM_NOT_FOUND_KHR: "PLATFORM_NOT_FOUND_KHR",
}  # fmt: skip

_RELEASED = ("MemObject", "Kernel", "Program", "CommandQueue", "Context", "Event")
# name: (return type, argument types), as in CL/cl.h.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "clGetPlatformIDs": (I32, [U32, VOIDP, _PU32]),
    "clGetPlatformInfo": (I32, [VOIDP, U32, SIZE, VOIDP, _PSIZE]),
    "clGetDeviceIDs": (I32, [VOIDP, U64, U32, VOIDP, _PU32]),
    "clGetDeviceInfo": (I32, [VOIDP, U32, SIZE, VOIDP, _PSIZE]),
    "clCreateContext": (VOIDP, [VOIDP, U32, VOIDP, VOIDP, VOIDP, _PI32]),
    "clCreateCommandQueue": (VOIDP, [VOIDP, VOIDP, U64, _PI32]),
    "clCreateProgramWithSource": (VOIDP, [VOIDP, U32, VOIDP, VOIDP, _PI32]),
    "clBuildProgram": (I32, [VOIDP, U32, VOIDP, ctypes.c_char_p, VOIDP, VOIDP]),
    "clGetProgramBuildInfo": (I32, [VOIDP, VOIDP, U32, SIZE, VOIDP, _PSIZE]),
    "clCreateKernel": (VOIDP, [VOIDP, ctypes.c_char_p, _PI32]),
    "clSetKernelArg": (I32, [VOIDP, U32, SIZE, VOIDP]),
    "clCreateBuffer": (VOIDP, [VOIDP, U64, SIZE, VOIDP, _PI32]),
    "clEnqueueReadBuffer": (I32, [VOIDP, VOIDP, U32, SIZE, SIZE, VOIDP, U32, VOIDP, VOIDP]),
    "clEnqueueWriteBuffer": (I32, [VOIDP, VOIDP, U32, SIZE, SIZE, VOIDP, U32, VOIDP, VOIDP]),
    "clEnqueueNDRangeKernel": (I32, [VOIDP, VOIDP, U32, VOIDP, VOIDP, VOIDP, U32, VOIDP, VOIDP]),
    "clWaitForEvents": (I32, [U32, VOIDP]),
    "clGetEventProfilingInfo": (I32, [VOIDP, U32, SIZE, VOIDP, _PSIZE]),
    **{f"clRelease{kind}": (I32, [VOIDP]) for kind in _RELEASED},
}  # fmt: skip


class OpenCLError(MestError):
    """An OpenCL call failed, or no OpenCL platform is installed."""


class OpenCLBuildError(OpenCLError):
    """A program did not compile; `log` holds the driver's build log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


@lru_cache(maxsize=1)
def cl() -> ctypes.CDLL:
    """The ICD loader with typed entry points.

    Raises:
        OpenCLError: the loader is not installed (names the Debian packages).
    """
    try:
        lib = ctypes.CDLL("libOpenCL.so.1")
    except OSError as err:
        raise OpenCLError(
            "libOpenCL.so.1 not found: install the Debian packages ocl-icd-libopencl1 and an OpenCL "
            "driver (pocl-opencl-icd for a CPU device)"
        ) from err
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def check(code: int, what: str) -> None:
    """Raise `OpenCLError` for a non-zero CL status."""
    if code != 0:
        raise OpenCLError(f"{what} failed: CL_{_ERRORS.get(code, 'ERROR')} ({code})")


def create(constructor: Callable[..., Any], *args: Any, what: str) -> int:
    """Call a `clCreate*` entry point (status in a trailing out-parameter); the new handle."""
    err = I32()
    handle = constructor(*args, ctypes.byref(err))
    check(err.value, what)
    if not handle:
        raise OpenCLError(f"{what} returned no object")
    return int(handle)


def info_text(getter: Callable[..., int], handle: int, param: int) -> str:
    """A string property (`clGet*Info` called twice: size, then value)."""
    size = SIZE()
    check(getter(handle, param, 0, None, ctypes.byref(size)), "reading OpenCL info")
    buf = ctypes.create_string_buffer(size.value)
    check(getter(handle, param, size, buf, None), "reading OpenCL info")
    return buf.value.decode(errors="replace").strip()


def release(kind: str, handle: int | None) -> None:
    """`clRelease<kind>` unless the handle is empty (objects whose constructor failed)."""
    if not handle:
        return
    try:
        getattr(cl(), f"clRelease{kind}")(handle)
    except Exception:  # noqa: BLE001 - called from __del__, possibly at interpreter exit: nothing to do
        pass
