"""Host arrays as the device helpers take them: numpy arrays or CPU torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # numpy arrays or CPU torch tensors (anything `np.asarray` takes)


def as_numpy(array: ArrayLike) -> np.ndarray:
    """A C-contiguous numpy view (or copy) of a numpy array or a CPU torch tensor."""
    if hasattr(array, "detach"):  # torch, without importing it; autograd history is not data
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array)
