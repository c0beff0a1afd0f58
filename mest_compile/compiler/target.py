"""Normalise a target name or dict into a TVM target, once, at the compiler's boundary."""

from __future__ import annotations

import json
import os
from functools import lru_cache

import tvm

from mest_compile.compiler.presets import load_preset
from mest_compile.errors import MestError


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
    return tvm.target.Target(spec)


def resolve_target(target: str | dict | tvm.target.Target = "host") -> tvm.target.Target:
    """A TVM target from a preset name (`"host"`, `"arm"`, ...), a target dict (or its JSON) or a `Target`."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        # A target's own JSON form (what `str(Target)` prints, and what kernel sets record).
        return _resolve(json.dumps(json.loads(target), sort_keys=True)) if target.lstrip().startswith("{") else _resolve_name(target)
    if not isinstance(target, dict):
        raise MestError(f"a target is a preset name, a dict or a tvm Target, got {target!r}")
    return _resolve(json.dumps(target, sort_keys=True))


@lru_cache(maxsize=None)
def _resolve_name(name: str) -> tvm.target.Target:
    preset = load_preset(name)
    spec = dict(preset.target)
    if preset.host is not None:
        spec["host"] = dict(preset.host)
    return _resolve(json.dumps(spec, sort_keys=True))
