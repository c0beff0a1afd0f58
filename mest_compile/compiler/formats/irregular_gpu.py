"""What the irregular scheme's GPU gradient kernels read besides the forward's buffers: each
nonzero's code (its filter and column, in the forward's CSR order, so `values[j]` is its weight)
and the nonzeros of each input channel (`column_code.py`), from the packed `IrregularFormat`'s
`flat_idx`."""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.column_code import column_code_buffers
from mest_compile.compiler.formats.irregular import IrregularFormat


def gpu_gradient_buffers(fmt: IrregularFormat) -> dict[str, torch.Tensor]:
    """`{"code", "t_ptr", "t_units"}` (int32) for `fmt`'s nonzeros."""
    flat = fmt.flat_idx[: fmt.nnz]  # o * columns + column
    columns = fmt.geometry.columns
    return column_code_buffers(flat // columns, flat % columns, fmt.geometry, fmt.capacity)
