"""Normalise what users call a target into a TVM target, once, at the compiler's boundary.

Accepted: a preset name (`host`, `arm`, `mali`, `adreno`, `cuda`: `targets/*.json`), a TVM tag
(`raspberry-pi/4b-aarch64`, `nvidia/nvidia-h100`), a target dict or its JSON, a `tvm.target.Target`,
and the legacy command-line strings of older TVM tutorials (`llvm -mtriple=aarch64-linux-gnu
-mattr=+neon`), which TVM 0.27 rejects and which are translated here into the dict form.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from typing import Any

import tvm

from mest_compile.compiler.presets import load_preset, preset_names
from mest_compile.errors import MestError

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
