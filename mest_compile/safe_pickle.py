"""Loading the pickle files MEST users exchange (CIFAR batches, importance pkls) without running code.

`pickle.load` on a downloaded or shared file can execute arbitrary code. The formats we read
hold only builtins, bytes and numpy arrays, so the unpickler admits exactly the globals that
numpy's array reconstruction needs (under both the numpy 1 `numpy.core` and numpy 2
`numpy._core` names) and refuses everything else.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mest_compile.errors import MestError

# (module, name) pairs a pickled ndarray refers to; numpy 2 renamed numpy.core to numpy._core.
_ALLOWED = {
    (core, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # Protocol 2 has no bytes opcode: Python 3 writes bytes (numpy's buffers, b'data' keys)
    # as _codecs.encode(text, "latin1"), which only builds a bytes object.
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves numpy array globals only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        # A numpy 1 pickle names numpy.core, a numpy 2 one numpy._core: accept both under either
        # numpy (importing numpy.core under numpy 2 only warns, so try numpy._core first).
        tail = module.split(".", 2)[2]
        for prefix in ("numpy._core", "numpy.core"):
            try:
                return getattr(importlib.import_module(f"{prefix}.{tail}"), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"global {module}.{name} is not available in this numpy")


def load_pickle(path: str | Path, *, encoding: str = "ASCII") -> Any:
    """Unpickle `path`, admitting only builtins and numpy arrays.

    Args:
        path: the file.
        encoding: how Python 2 `str` objects are decoded; `"latin1"` reads Python 2 numpy arrays
            (the CIFAR batches were written by Python 2).

    Returns:
        The unpickled object.

    Raises:
        MestError: naming `path` when it is missing, unreadable, truncated, not a pickle, or
            refers to anything but numpy arrays.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _ArrayUnpickler(f, encoding=encoding).load()
    except FileNotFoundError:
        raise MestError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise MestError(f"expected a file, found a directory: {path}") from None
    except OSError as err:
        raise MestError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise MestError(f"corrupt pickle file {path}: {type(err).__name__}: {err}") from None
