"""What the block scheme's GPU gradient kernels read besides the forward's buffers.

`code[j] = g * C*KH*KW + column` names kept block `j`'s filter group and column; `t_ptr`/`t_blk`
list the blocks of each input channel (the transposed structure the input gradient walks). All
three follow from the packed `BlockFormat` (its `flat_idx`), sized by its capacity, and are
rebuilt in torch whenever it is repacked.
"""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.block import BLOCK_ROWS, BlockFormat


def gpu_gradient_buffers(fmt: BlockFormat) -> dict[str, torch.Tensor]:
    """`{"code", "t_ptr", "t_blk"}` (int32) for `fmt`'s kept blocks."""
    geo = fmt.geometry
    columns = geo.in_channels * geo.kernel_h * geo.kernel_w
    first = fmt.flat_idx[: fmt.nnz, 0]  # weight index of row 0 of each block: 4g * columns + column
    group, column = first // (BLOCK_ROWS * columns), first % columns
    code = torch.zeros(fmt.capacity, dtype=torch.int32)
    code[: fmt.nnz] = (group * columns + column).to(torch.int32)
    channel = column // (geo.kernel_h * geo.kernel_w)
    t_blk = torch.zeros(fmt.capacity, dtype=torch.int32)
    t_blk[: fmt.nnz] = torch.argsort(channel, stable=True).to(torch.int32)
    t_ptr = torch.zeros(geo.in_channels + 1, dtype=torch.int32)
    t_ptr[1:] = torch.cumsum(torch.bincount(channel, minlength=geo.in_channels), 0).to(torch.int32)
    return {"code": code, "t_ptr": t_ptr, "t_blk": t_blk}
