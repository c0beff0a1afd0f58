"""Normalise a target name or dict into a TVM target, once, at the compiler's boundary."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import tvm

from mest_compile.errors import MestError

# Used when the `targets/` presets are not importable (a source checkout that is not installed).
_HOST = {"kind": "llvm", "mcpu": "native"}


@lru_cache(maxsize=None)
def _preset_text(name: str) -> str | None:
    """The preset file's text (read once per process)."""
    try:
        from importlib.resources import files

        text = files("mest_compile.targets").joinpath(f"{name}.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        path = Path(__file__).resolve().parents[2] / "targets" / f"{name}.json"
        if not path.is_file():
            return None
        text = path.read_text()
    return text


def _preset(name: str) -> dict | None:
    text = _preset_text(name)
    return None if text is None else json.loads(text)["target"]


def threads() -> int:
    """Threads TVM's pool runs with (`TVM_NUM_THREADS`, else the visible CPUs)."""
    env = os.environ.get("TVM_NUM_THREADS")
    return int(env) if env else len(os.sched_getaffinity(0))


@lru_cache(maxsize=None)
def _resolve(key: str) -> tvm.target.Target:
    spec = json.loads(key)
    if spec.get("kind") == "llvm" and spec.get("mcpu") == "native":
        # Spell out the CPU so the kernel cache key names what the code was compiled for.
        spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    spec.setdefault("num-cores", threads())
    return tvm.target.Target(spec)


def resolve_target(target: str | dict | tvm.target.Target = "host") -> tvm.target.Target:
    """A TVM target from a preset name (`"host"`), a target dict or a `Target`."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        return _resolve_name(target)
    if not isinstance(target, dict):
        raise MestError(f"a target is a preset name, a dict or a tvm Target, got {target!r}")
    return _resolve(json.dumps(target, sort_keys=True))


@lru_cache(maxsize=None)
def _resolve_name(target: str) -> tvm.target.Target:
    spec = _preset(target) or (dict(_HOST) if target == "host" else None)
    if spec is None:
        raise MestError(f"unknown target preset {target!r}")
    return _resolve(json.dumps(spec, sort_keys=True))
