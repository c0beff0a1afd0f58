"""What the block scheme's GPU gradient kernels read besides the forward's buffers: each kept
block's code (its filter group and column) and the blocks of each input channel
(`column_code.py`), from the packed `BlockFormat`'s `flat_idx`."""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.block import BLOCK_ROWS, BlockFormat
from mest_compile.compiler.formats.column_code import column_code_buffers


def gpu_gradient_buffers(fmt: BlockFormat) -> dict[str, torch.Tensor]:
    """`{"code", "t_ptr", "t_units"}` (int32) for `fmt`'s kept blocks."""
    columns = fmt.geometry.columns
    first = fmt.flat_idx[: fmt.nnz, 0]  # weight index of row 0 of each block: 4g * columns + column
    return column_code_buffers(first // (BLOCK_ROWS * columns), first % columns, fmt.geometry, fmt.capacity)
