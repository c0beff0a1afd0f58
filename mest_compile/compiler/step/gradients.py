"""Relax gradients that follow PyTorch's conventions where TVM's differ.

ReLU at exactly 0: TVM passes the gradient through (`where(x < 0, 0, dy)`), PyTorch does not
(`threshold_backward`: `dy * (x > 0)`). Channels of a channel-pruned conv are exactly 0 before
their batch norm's bias, so the difference is not academic: it changed the batch norms' bias
gradients of every pruned filter. Registered above TVM's level when the step is built.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.op import greater, where
from tvm.relax.op.base import register_gradient

# TVM registers its own gradients at level 10.
_LEVEL = 11


def _relu_grad(orig_var: relax.Var, orig_call: relax.Call, output_grad: relax.Var,
               ctx: relax.BlockBuilder) -> list[relax.Expr]:
    x = orig_call.args[0]
    zero = relax.const(0, str(x.ty.dtype))
    return [where(greater(x, zero), output_grad, zero)]


register_gradient("relax.nn.relu", _relu_grad, level=_LEVEL)
