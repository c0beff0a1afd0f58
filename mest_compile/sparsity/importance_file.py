"""MEST's example-importance pkl: examples sorted by forgetting count, readable by MEST and by us.

The file is a pickled dict `{'indices': int64[N], 'forgetting counts': int64[N]}`: original
dataset indices sorted by ascending forgetting count, and those counts. MEST names it
`<name>_unforget_<number of zero counts>.pkl` (e.g. the shipped
`irr_0.6_MwE_final_unforget_15254.pkl`). Files written with numpy 2 load in numpy >= 1.26.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mest_compile.errors import MestError
from mest_compile.io import atomic_open
from mest_compile.safe_pickle import load_pickle

INDICES_KEY = "indices"
COUNTS_KEY = "forgetting counts"


class ForgettingOrder(NamedTuple):
    """Examples ordered by ascending forgetting count; unpacks as `(indices, counts, num_zero)`."""

    indices: torch.Tensor  # original dataset indices, int64
    counts: torch.Tensor  # their forgetting counts, int64, ascending
    num_zero: int  # how many were never forgotten


def _validated(indices: object, counts: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as int64, or a `MestError` saying what is wrong with them (and `where`)."""
    arrays = []
    for key, value in ((INDICES_KEY, indices), (COUNTS_KEY, counts)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise MestError(f"{where}: {key!r} must be a 1-D integer array, got {array.dtype} {array.shape}")
        arrays.append(array.astype(np.int64))
    idx, cnt = arrays
    if idx.shape != cnt.shape:
        raise MestError(f"{where}: {idx.size} indices but {cnt.size} forgetting counts")
    if idx.size and idx.min() < 0:
        raise MestError(f"{where}: negative example index {int(idx.min())}")
    if np.unique(idx).size != idx.size:
        raise MestError(f"{where}: {idx.size - np.unique(idx).size} duplicate example indices")
    if cnt.size and cnt.min() < 0:
        raise MestError(f"{where}: negative forgetting count {int(cnt.min())}")
    if np.any(np.diff(cnt) < 0):
        raise MestError(f"{where}: forgetting counts are not sorted ascending")
    return idx, cnt


def importance_filename(name: str, num_zero: int) -> str:
    """MEST's file name, `<name>_unforget_<num_zero>.pkl`.

    A `name` ending in `.pkl` loses that suffix first: the reference wrote `x.pkl_unforget_N`
    with no extension in that case, which nothing could then find by name.
    """
    stem = name[:-4] if name.endswith(".pkl") else name
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem):
        raise MestError(f"importance file name must be a plain file name, got {name!r}")
    return f"{stem}_unforget_{num_zero}.pkl"


def write_importance(
    path_or_dir: str | Path,
    indices: torch.Tensor | np.ndarray,
    counts: torch.Tensor | np.ndarray,
    *,
    name: str = "importance",
) -> Path:
    """Write an importance pkl atomically (a temporary file, then `os.replace`).

    Args:
        path_or_dir: a path ending in `.pkl` is the file itself; anything else is a directory
            (created if missing) that receives `<name>_unforget_<num_zero>.pkl`.
        indices: original indices sorted by ascending forgetting count (distinct, >= 0).
        counts: their forgetting counts (ascending, >= 0).
        name: the file name stem when `path_or_dir` is a directory.

    Returns:
        The path written. A crash mid-write leaves any previous file intact.
    """
    target = Path(path_or_dir).expanduser()
    idx, cnt = _validated(indices, counts, f"importance for {target}")
    if target.suffix != ".pkl":
        target = target / importance_filename(name, int((cnt == 0).sum()))
    try:
        with atomic_open(target) as f:
            # Protocol 3 like the shipped file: readable by every Python 3 that runs MEST.
            pickle.dump({INDICES_KEY: idx, COUNTS_KEY: cnt}, f, protocol=3)
    except OSError as err:
        raise MestError(f"cannot write {target}: {err.strerror or err}") from None
    return target


def read_importance(path: str | Path) -> ForgettingOrder:
    """Read and validate an importance pkl (ours or MEST's).

    Args:
        path: the file; like the reference's `--sorting-file`, `path + ".pkl"` is tried when
            `path` itself does not exist.

    Returns:
        The order, as `ForgettingTracker.sorted_by_forgetting` gives it.

    Raises:
        MestError: naming the path, when it is missing, not a pickle, lacks or adds keys, or
            holds arrays of the wrong type, different lengths, duplicates or unsorted counts.
    """
    path = Path(path).expanduser()
    if not path.exists() and path.with_name(path.name + ".pkl").exists():
        path = path.with_name(path.name + ".pkl")
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise MestError(f"{path}: an importance file holds a dict, found {type(data).__name__}")
    if set(data) != {INDICES_KEY, COUNTS_KEY}:
        raise MestError(f"{path}: expected keys {INDICES_KEY!r} and {COUNTS_KEY!r}, found {sorted(map(str, data))}")
    idx, cnt = _validated(data[INDICES_KEY], data[COUNTS_KEY], str(path))
    return ForgettingOrder(torch.from_numpy(idx), torch.from_numpy(cnt), int((cnt == 0).sum()))
