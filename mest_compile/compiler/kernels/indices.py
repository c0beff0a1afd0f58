"""How the host and GPU kernels read a format's compact index buffers (`formats/compact.py`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tvm import tirx

from mest_compile.compiler.formats.compact import bias, tir_dtype


def index_reader(dtype: torch.dtype) -> tuple[str, Callable[[tirx.PrimExpr], tirx.PrimExpr]]:
    """The TIR buffer dtype of stored indices of `dtype`, and how a kernel reads one: widened to
    int32 with the storage bias added back (a sign extension; the bias folds into the address)."""
    offset = bias(dtype)
    if offset == 0:
        return tir_dtype(dtype), lambda load: load
    return tir_dtype(dtype), lambda load: tirx.Cast("int32", load) + offset
