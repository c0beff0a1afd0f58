"""Checkpoints: one file per run directory, replaced atomically at the end of every epoch."""

from __future__ import annotations

import copy
import pathlib
import pickle
import zipfile
from typing import Any

import torch

from mest_compile.errors import MestError, first_line
from mest_compile.io import atomic_write

FORMAT = "mest-compile-checkpoint"
VERSION = 2  # 2: training algorithms' state under "algorithms", by name; 1 is upgraded on load
FILENAME = "checkpoint.pt"
REQUIRED = ("format", "version", "epoch", "config", "model", "optimizer", "scheduler", "algorithms", "rng")


def checkpoint_path(run_dir: str | pathlib.Path) -> pathlib.Path:
    """Where a run directory keeps its checkpoint."""
    return pathlib.Path(run_dir) / FILENAME


def save_checkpoint(path: str | pathlib.Path, state: dict[str, Any]) -> None:
    """Write `state` (plain containers of tensors and numbers) atomically, its tensors as CPU tensors.

    A run on a GPU writes a checkpoint any machine reads; resuming puts the tensors back where
    the run's model lives (`load_state_dict` copies into it).
    """
    payload = _on_cpu({"format": FORMAT, "version": VERSION, **state})
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _on_cpu(value: Any) -> Any:
    """`value` with every tensor in its dicts, lists and tuples on the CPU.

    A container holding CPU tensors only is returned as it is, and a copied dict keeps its type and
    attributes (a module's `state_dict` carries `_metadata`), so a CPU run writes what it always wrote.
    """
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        moved = {key: _on_cpu(item) for key, item in value.items()}
        if all(moved[key] is item for key, item in value.items()):
            return value
        out = copy.copy(value)
        out.update(moved)
        return out
    if type(value) in (list, tuple):
        items = [_on_cpu(item) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    return value


def load_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Read and validate a checkpoint; any damage is a one-line `MestError` naming the file."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise MestError(f"no checkpoint at {str(file)!r}")
    try:
        # weights_only: a checkpoint is data; loading one must never run code.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = first_line(exc)
        raise MestError(f"checkpoint {str(file)!r} is corrupt or unreadable ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MestError(f"{str(file)!r} is not a mest-compile checkpoint")
    if state.get("version") == 1:
        state = _from_version_1(state)
    if state.get("version") != VERSION:
        raise MestError(f"checkpoint {str(file)!r} has version {state.get('version')!r}; this mest-compile reads {VERSION}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise MestError(f"checkpoint {str(file)!r} is incomplete: missing {missing[0]!r}")
    return state


def _from_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (mutation and data-efficiency state at top level) in the version-2 layout.

    Version 1 stored the forgetting statistics of every run; a run without data efficiency
    ignores them on resume, exactly as it ignored them then.
    """
    upgraded = {key: value for key, value in state.items() if key not in ("mutation", "forgetting", "active")}
    algorithms: dict[str, Any] = {}
    if "mutation" in state:
        algorithms["elastic_mutation"] = state["mutation"]
    if "forgetting" in state and "active" in state:
        algorithms["data_efficiency"] = {"forgetting": state["forgetting"], "active": state["active"]}
    upgraded.update(version=VERSION, algorithms=algorithms)
    return upgraded
