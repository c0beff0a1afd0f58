"""The GPU gradient kernels' index buffers of schemes coded as `row * C*KH*KW + column`.

Block (a row is a filter group) and irregular (a row is a filter) kernels name each kept unit by
one code, `code[j] = row * C*KH*KW + c*KH*KW + kh*KW + kw`, in the order of `values`' rows, and
walk the units of each input channel through a transposed CSR (`t_ptr` over channels, `t_units`
the unit rows, filters ascending within a channel). Sized by the format's capacity (entries past
`nnz` stay zero) and rebuilt in torch whenever the format is repacked.
"""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry


def column_code_buffers(row: torch.Tensor, column: torch.Tensor, geometry: ConvGeometry,
                        capacity: int) -> dict[str, torch.Tensor]:
    """`{"code", "t_ptr", "t_units"}` (int32) for kept units at weight-matrix `row` and `column`."""
    nnz = row.numel()
    code = torch.zeros(capacity, dtype=torch.int32)
    code[:nnz] = (row * geometry.columns + column).to(torch.int32)
    channel = column // (geometry.kernel_h * geometry.kernel_w)
    t_units = torch.zeros(capacity, dtype=torch.int32)
    t_units[:nnz] = torch.argsort(channel, stable=True).to(torch.int32)
    t_ptr = torch.zeros(geometry.in_channels + 1, dtype=torch.int32)
    t_ptr[1:] = torch.cumsum(torch.bincount(channel, minlength=geometry.in_channels), 0).to(torch.int32)
    return {"code": code, "t_ptr": t_ptr, "t_units": t_units}
