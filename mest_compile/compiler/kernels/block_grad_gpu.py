"""Block-scheme input and weight gradients for GPUs (`coded_grad_gpu.py`).

A kept block's code is `g * C*KH*KW + column` (filter group `g`, `formats/block_gpu.py`); its 4
lanes are the group's 4 filters at one tap. The input gradient walks `t_ptr`/`t_units`, the blocks
of each input channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import tirx

from mest_compile.compiler.formats.block import BLOCK_ROWS
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.kernels.coded_grad_gpu import ColumnCode, coded_dgrad_gpu, coded_wgrad_gpu


@dataclass(frozen=True)
class BlockCode(ColumnCode):
    """A kept block's code: the row is its filter group, each lane one of the group's filters."""

    lanes: int = BLOCK_ROWS

    def filter(self, code: Any, lane: Any) -> Any:
        return super().filter(code, lane) * BLOCK_ROWS + lane


def block_dgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU input-gradient kernel `f(dy, values, t_ptr, t_units, code, dx)` (unscheduled)."""
    return coded_dgrad_gpu(geo, BlockCode(geo), "block_dgrad_gpu")


def block_wgrad_gpu(geo: ConvGeometry) -> tirx.PrimFunc:
    """TIR of the GPU weight-gradient kernel `f(x, dy, code, dv)` (unscheduled)."""
    return coded_wgrad_gpu(geo, BlockCode(geo), "block_wgrad_gpu")
