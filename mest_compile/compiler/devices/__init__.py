"""Devices we do not have, exercised for real (DESIGN.md decision 8).

* `EmulatedBoard`: an aarch64 board under qemu-user with the aarch64 TVM runtime and an RPC
  server registered with a tracker on 127.0.0.1 (`board_image` provisions its disk once).
  `build_for_board` cross-compiles for the `arm` preset; `RemoteLibrary` runs the result there.
* `compile_opencl`: TVM's OpenCL C for the `mali` / `adreno` presets, launched by our own
  ctypes OpenCL host (`opencl.Context`) on whatever OpenCL device exists (PoCL on a CPU).
* `cuda_source` / `compile_cuda`: CUDA C for the `cuda` preset, compiled to PTX or cubin
  with nvcc, no GPU needed.

Every helper fails with a one-line `MestError` naming what to install when a host tool is
missing. See docs/DEVICES.md.
"""

from mest_compile.compiler.devices.board_image import BoardImage, provision_board
from mest_compile.compiler.devices.cross import board_fcompile, build_for_board, export_for_board
from mest_compile.compiler.devices.cuda import compile_cuda, cuda_source
from mest_compile.compiler.devices.opencl import Context, OpenCLBuildError, OpenCLError, devices
from mest_compile.compiler.devices.opencl_tvm import OpenCLFunction, compile_opencl, parse_kernel_signatures
from mest_compile.compiler.presets import Preset, load_preset
from mest_compile.compiler.devices.qemu_board import EmulatedBoard
from mest_compile.compiler.devices.remote import RemoteLibrary
from mest_compile.compiler.devices.toolchain import MissingToolError

__all__ = [
    "BoardImage", "Context", "EmulatedBoard", "MissingToolError", "OpenCLBuildError", "OpenCLError",
    "OpenCLFunction", "Preset", "RemoteLibrary", "board_fcompile", "build_for_board", "compile_cuda",
    "compile_opencl", "cuda_source", "devices", "export_for_board", "load_preset",
    "parse_kernel_signatures", "provision_board",
]  # fmt: skip
