"""Irregular-scheme input and weight gradients for GPUs (`coded_grad_gpu.py`).

A nonzero's code is `o * C*KH*KW + c*KH*KW + kh*KW + kw` (`formats/irregular_gpu.py`, a
`ColumnCode`); `values` holds one weight per nonzero. The input gradient walks `t_ptr`/`t_units`,
the nonzeros of each input channel.
"""

from __future__ import annotations

from tvm import tirx

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.coded_grad_gpu import ColumnCode, coded_dgrad_gpu, coded_wgrad_gpu


def irregular_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel `f(dy, values, t_ptr, t_units, code, dx)` (unscheduled)."""
    return coded_dgrad_gpu(geo, ColumnCode(geo), "irregular_dgrad_gpu")


def irregular_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel `f(x, dy, code, dv)` (unscheduled)."""
    return coded_wgrad_gpu(geo, ColumnCode(geo), "irregular_wgrad_gpu")
