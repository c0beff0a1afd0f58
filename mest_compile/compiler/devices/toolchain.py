"""Host programs the devices need, and what to install when one is missing.

Every device helper asks for its tools through `require`, so a machine without them fails at
once with one line naming the Debian package, instead of deep inside TVM or a subprocess.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mest_compile.errors import MestError


class MissingToolError(MestError):
    """A host program a device needs is not installed."""


@dataclass(frozen=True)
class Tool:
    """A host program and how to get it.

    Attributes:
        command: the executable looked up on `PATH`.
        install: what to install, as a user would type it (a Debian package or a hint).
        purpose: why the device needs it (finishes the error message).
    """

    command: str
    install: str
    purpose: str

    def find(self) -> str | None:
        """Absolute path of the program, or None."""
        return shutil.which(self.command)


QEMU_AARCH64 = Tool("qemu-aarch64", "the Debian package qemu-user", "to run aarch64 programs on this machine")
AARCH64_GCC = Tool("aarch64-linux-gnu-gcc", "the Debian package gcc-aarch64-linux-gnu", "to link aarch64 libraries")
APT_GET = Tool("apt-get", "a Debian-based host (apt)", "to fetch the board's arm64 packages")
DPKG_DEB = Tool("dpkg-deb", "the Debian package dpkg", "to unpack the board's arm64 packages")
NVCC = Tool(
    "nvcc",
    "NVIDIA's CUDA toolkit (put its bin/ on PATH or set CUDA_HOME)",
    "to compile CUDA C to PTX or cubin",
)

# Cross compilers named by target presets, with their Debian packages.
CROSS_COMPILERS = {AARCH64_GCC.command: AARCH64_GCC}


def require(tool: Tool) -> str:
    """Absolute path of `tool`.

    Raises:
        MissingToolError: the program is not on `PATH`; the message names what to install.
    """
    path = tool.find()
    if path is None:
        raise MissingToolError(f"{tool.command} not found ({tool.purpose}): install {tool.install}")
    return path


def require_cross_compiler(command: str) -> str:
    """Absolute path of a preset's cross compiler (known ones name their Debian package)."""
    tool = CROSS_COMPILERS.get(command, Tool(command, f"a cross compiler providing {command}", "to link"))
    return require(tool)


def require_nvcc() -> str:
    """Absolute path of nvcc, also looked for under `CUDA_HOME` (and put on PATH for TVM).

    TVM's nvcc driver runs plain `nvcc`, so a toolkit found only through `CUDA_HOME` has its
    `bin/` prepended to this process's PATH.
    """
    found = NVCC.find()
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        os.environ["PATH"] = f"{Path(home) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return str(Path(home) / "bin" / "nvcc")
    return require(NVCC)
