"""Target presets (`targets/*.json`, shipped as `mest_compile.targets`) as the devices read them.

A device needs more of a preset than the TVM target: the host target of GPU presets, the cross
compiler that links for the board, and the Debian packages to name when something is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import tvm

from mest_compile.errors import MestError


@dataclass(frozen=True)
class Preset:
    """One `targets/<name>.json` file.

    Attributes:
        name: the preset name (`"arm"`, `"mali"`, ...).
        target: the TVM target dict of the device.
        host: the TVM target dict of the host code (GPU presets), or None.
        cross_compiler: the program that links libraries for the device, or None (native).
        debian_packages: what the preset says the host needs.
        description: one line for people (`mest-compile targets`).
        family: "cpu" or "gpu": which schedule spaces apply.
        measure: how kernels are timed on the device: "local", "rpc" or "opencl".
    """

    name: str
    target: dict[str, Any]
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None
    debian_packages: tuple[str, ...] = field(default=())
    description: str = ""
    family: str = "cpu"
    measure: str = "local"

    def tvm_target(self, host: dict[str, Any] | None = None) -> tvm.target.Target:
        """The TVM target, with `host` (default: the preset's own host) attached.

        GPU kernels only need a host to hold their launch stubs; when the generated code is
        launched by our own host code (OpenCL) or compiled to PTX, the host target can be this
        machine's LLVM, so callers may override it.
        """
        spec = dict(self.target)
        chosen = host if host is not None else self.host
        if chosen is not None:
            spec["host"] = dict(chosen)
        try:
            return tvm.target.Target(spec)
        except (ValueError, RuntimeError) as err:
            raise MestError(f"target preset {self.name!r} is not a valid TVM target: {err}") from err


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name[: -len(".json")] for p in files("mest_compile.targets").iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        MestError: no such preset (the message lists the known ones).
    """
    path = files("mest_compile.targets").joinpath(f"{name}.json")
    if not path.is_file():
        raise MestError(f"unknown target preset {name!r}; known: {', '.join(preset_names())}")
    raw = json.loads(path.read_text())
    return Preset(
        name=raw.get("name", name),
        target=raw["target"],
        host=raw.get("host"),
        cross_compiler=raw.get("cross_compiler"),
        debian_packages=tuple(raw.get("debian_packages", ())),
        description=raw.get("description", ""),
        family=raw.get("family", "cpu"),
        measure=raw.get("measure", "local"),
    )


def cross_compiler_for(triple: str) -> str | None:
    """The cross compiler a preset names for an LLVM target triple (None: this machine's own).

    Raises:
        MestError: a foreign triple no preset knows how to link for.
    """
    if not triple or triple.startswith(("x86_64", "i686")):
        return None
    for name in preset_names():
        preset = load_preset(name)
        spec = preset.host if preset.host is not None else preset.target
        if preset.cross_compiler and str(spec.get("mtriple", "")) == triple:
            return preset.cross_compiler
    raise MestError(f"no target preset names a cross compiler for {triple}")
