"""Checkpoints: one file per run directory, replaced atomically at the end of every epoch."""

from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Any

import torch

from mest_compile.errors import MestError
from mest_compile.io import atomic_write

FORMAT = "mest-compile-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"
REQUIRED = ("format", "version", "epoch", "config", "model", "optimizer", "scheduler", "mutation", "rng")


def checkpoint_path(run_dir: str | pathlib.Path) -> pathlib.Path:
    """Where a run directory keeps its checkpoint."""
    return pathlib.Path(run_dir) / FILENAME


def save_checkpoint(path: str | pathlib.Path, state: dict[str, Any]) -> None:
    """Write `state` (plain containers of tensors and numbers) atomically."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Read and validate a checkpoint; any damage is a one-line `MestError` naming the file."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise MestError(f"no checkpoint at {str(file)!r}")
    try:
        # weights_only: a checkpoint is data; loading one must never run code.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MestError(f"checkpoint {str(file)!r} is corrupt or unreadable ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MestError(f"{str(file)!r} is not a mest-compile checkpoint")
    if state.get("version") != VERSION:
        raise MestError(f"checkpoint {str(file)!r} has version {state.get('version')!r}; this mest-compile reads {VERSION}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise MestError(f"checkpoint {str(file)!r} is incomplete: missing {missing[0]!r}")
    return state
