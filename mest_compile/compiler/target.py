"""One `Target` value, built once at the compiler's boundary (the CLI and the public API).

`as_target(anything)` accepts a preset name (`host`, `arm`, `mali`, `adreno`, `cuda`: `targets/*.json`), a TVM tag
(`raspberry-pi/4b-aarch64`, `nvidia/nvidia-h100`), a target dict or its JSON, a `tvm.target.Target`,
and the legacy command-line strings of older TVM tutorials (`llvm -mtriple=aarch64-linux-gnu
-mattr=+neon`), which TVM 0.27 rejects and which are translated here into the dict form. Everything
inside the compiler takes the resulting `Target`: the TVM target, the preset it came from (how
kernels are measured, the cross compiler) and its target family (`cpu`, `gpu`: which kernels and
schedules apply), so no inner function asks "is this a GPU" again.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import tvm

from mest_compile.compiler.presets import Preset, cross_compiler_for, load_preset, preset_names
from mest_compile.errors import MestError

if TYPE_CHECKING:
    from mest_compile.compiler.target_families import TargetFamily


# Legacy options whose values are lists in the dict form (comma-separated on the old command line).
_LIST_OPTIONS = {"mattr", "keys", "libs"}


def threads() -> int:
    """Threads TVM's pool runs with (`TVM_NUM_THREADS`, else the visible CPUs)."""
    env = os.environ.get("TVM_NUM_THREADS")
    return int(env) if env else len(os.sched_getaffinity(0))


@lru_cache(maxsize=None)
def _resolve(key: str) -> tvm.target.Target:
    spec = json.loads(key)
    if spec.get("kind") == "llvm":
        if spec.get("mcpu") == "native":
            # Spell out the CPU so the kernel cache key names what the code was compiled for.
            spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        # Schedules split work by it; only CPU targets have the option.
        spec.setdefault("num-cores", threads())
    try:
        return tvm.target.Target(spec)
    except (ValueError, RuntimeError) as err:
        raise MestError(f"not a valid TVM target {key}: {str(err).splitlines()[0]}") from None


def resolve_target(target: str | dict[str, Any] | tvm.target.Target = "host") -> tvm.target.Target:
    """A TVM target from any accepted form (see the module docstring)."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return _resolve(json.dumps(target, sort_keys=True))
    if not isinstance(target, str) or not target.strip():
        raise MestError(f"a target is a preset name, a TVM tag, a target dict or a tvm Target, got {target!r}")
    return _resolve_text(target.strip())


@lru_cache(maxsize=None)
def _resolve_text(text: str) -> tvm.target.Target:
    if text.startswith("{"):
        try:
            return _resolve(json.dumps(json.loads(text), sort_keys=True))
        except json.JSONDecodeError as err:
            raise MestError(f"target {text!r} is not valid JSON: {err}") from None
    if " " in text or text.startswith("-"):
        spec = translate_legacy(text)
        warnings.warn(f"legacy target string {text!r} read as {json.dumps(spec)}; TVM 0.27 only takes the dict form",
                      stacklevel=3)
        return _resolve(json.dumps(spec, sort_keys=True))
    if text in preset_names():
        preset = load_preset(text)
        spec = dict(preset.target)
        if preset.host is not None:
            spec["host"] = dict(preset.host)
        return _resolve(json.dumps(spec, sort_keys=True))
    try:
        return tvm.target.Target(text)  # a TVM tag such as "raspberry-pi/4b-aarch64", or a bare kind
    except (ValueError, RuntimeError):
        raise MestError(f"unknown target {text!r}; presets: {', '.join(preset_names())}; or a TVM tag "
                        "(e.g. raspberry-pi/4b-aarch64) or a target dict") from None


def translate_legacy(text: str) -> dict[str, Any]:
    """`"llvm -mtriple=aarch64-linux-gnu -mattr=+neon"` -> `{"kind": "llvm", "mtriple": ..., "mattr": ["+neon"]}`."""
    kind, *options = text.split()
    if kind.startswith("-"):
        raise MestError(f"legacy target string {text!r} must start with the target kind (llvm, cuda, opencl, ...)")
    spec: dict[str, Any] = {"kind": kind}
    for option in options:
        if not option.startswith("-") or "=" not in option:
            if option.startswith("-"):  # a bare flag such as -libs is a switch in the old syntax
                spec[option.lstrip("-")] = True
                continue
            raise MestError(f"legacy target string {text!r}: cannot read {option!r} (expected -key=value)")
        key, value = option.lstrip("-").split("=", 1)
        if key in _LIST_OPTIONS:
            spec[key] = [v for v in value.split(",") if v]
        elif value.lstrip("-").isdigit():
            spec[key] = int(value)
        else:
            spec[key] = value
    return spec


@dataclass(frozen=True, eq=False)
class Target:
    """A compilation target, normalised: what every inner function of the compiler takes.

    Attributes:
        name: the preset name, or the text the target was given as.
        tvm: the TVM target (CPU targets carry `num-cores`).
        preset: the preset file, or one derived from a tag, dict or legacy string.
        key: `str(tvm)`, what kernel caches and tuning manifests are keyed by.
    """

    name: str
    tvm: tvm.target.Target
    preset: Preset
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", str(self.tvm))

    @property
    def family(self) -> TargetFamily:
        """The target family (`cpu`, `gpu`) whose kernels and schedules apply."""
        from mest_compile.compiler.target_families import family_of

        return family_of(self.preset.family)

    @property
    def tensor_device(self) -> str:
        """Where PyTorch tensors live for this target's kernels: "cuda" for CUDA, else "cpu"
        (OpenCL kernels take CPU tensors; our host copies them to the device)."""
        return "cuda" if self.tvm.kind.name == "cuda" else "cpu"

    @property
    def num_cores(self) -> int:
        """Cores the schedules split work over (1 for GPU targets, which have no such option)."""
        return int(self.tvm.attrs.get("num-cores", 1))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.key


def as_target(target: Any = "host") -> Target:
    """The `Target` of any accepted form (a `Target` is returned as it is).

    Raises:
        MestError: not a preset name, TVM tag, target dict or legacy target string.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return _target_of_text(target.strip())
    if isinstance(target, dict):  # as its JSON, so a dict given on every call is resolved once
        return _target_of_text(json.dumps(target, sort_keys=True))
    tgt = resolve_target(target)
    return Target(str(target), tgt, _derived_preset(str(target), tgt))


@lru_cache(maxsize=None)
def _target_of_text(text: str) -> Target:
    tgt = resolve_target(text)
    preset = load_preset(text) if text in preset_names() else _derived_preset(text, tgt)
    return Target(text, tgt, preset)


def _derived_preset(name: str, tgt: tvm.target.Target) -> Preset:
    """The preset of a target given as a tag, dict or legacy string.

    How kernels for it are measured: OpenCL through our launcher, a foreign CPU over RPC
    (cross-linked), anything else on this machine.
    """
    kind = tgt.kind.name
    family = "gpu" if "gpu" in [str(k) for k in tgt.keys] else "cpu"
    compiler = cross_compiler_for(str(tgt.attrs.get("mtriple", ""))) if kind == "llvm" else None
    measure = _MEASURE_BY_KIND.get(kind, "rpc" if compiler else "local")
    return Preset(name=name, target=dict(tgt.export()), cross_compiler=compiler, family=family, measure=measure,
                  description=f"derived from {name}")


#: TVM target kinds measured by something other than this machine or an RPC board.
_MEASURE_BY_KIND = {"opencl": "opencl"}
