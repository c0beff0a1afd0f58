"""What the irregular scheme's GPU gradient kernels read besides the forward's buffers.

`code[j] = o * C*KH*KW + c*KH*KW + kh*KW + kw` names nonzero `j`'s filter and column (the
forward's CSR order, so `values[j]` is its weight); `t_ptr`/`t_nz` list the nonzeros of each
input channel (the transposed structure the input gradient walks). All three follow from the
packed `IrregularFormat` (its `flat_idx`), sized by its capacity, and are rebuilt in torch
whenever it is repacked.
"""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.irregular import IrregularFormat


def gpu_gradient_buffers(fmt: IrregularFormat) -> dict[str, torch.Tensor]:
    """`{"code", "t_ptr", "t_nz"}` (int32) for `fmt`'s nonzeros; entries past `nnz` stay zero."""
    geo = fmt.geometry
    flat = fmt.flat_idx[: fmt.nnz]  # o * columns + column: already the code, as int64
    code = torch.zeros(fmt.capacity, dtype=torch.int32)
    code[: fmt.nnz] = flat.to(torch.int32)
    channel = flat % geo.columns // (geo.kernel_h * geo.kernel_w)
    t_nz = torch.zeros(fmt.capacity, dtype=torch.int32)
    t_nz[: fmt.nnz] = torch.argsort(channel, stable=True).to(torch.int32)  # stable: filters ascend per channel
    t_ptr = torch.zeros(geo.in_channels + 1, dtype=torch.int32)
    t_ptr[1:] = torch.cumsum(torch.bincount(channel, minlength=geo.in_channels), 0).to(torch.int32)
    return {"code": code, "t_ptr": t_ptr, "t_nz": t_nz}
