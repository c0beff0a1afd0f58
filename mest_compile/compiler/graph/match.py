"""Find masked convolutions in a Relax graph: `conv2d(x, weight * mask)`, however it was traced.

A traced `SparseConv2d` reads `multiply(p_weight, astype(mask_const, "float32"))` (the importer
turns buffers into constants); a plain graph may multiply two parameters, a parameter and a
float constant, or put the mask first. One dataflow pattern covers all of them; which operand is
the weight is decided afterwards (`_weight_first`), and whether the layer can be compiled is
reported as a reason rather than a silent skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, is_var, wildcard

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.errors import MestError

_LEAF_A, _LEAF_B = is_var() | is_const(), is_var() | is_const()
_OPERAND_A = is_op("relax.astype")(_LEAF_A) | _LEAF_A
_OPERAND_B = is_op("relax.astype")(_LEAF_B) | _LEAF_B
_DATA = wildcard()
#: `conv2d(x, a * b)` with each factor a parameter or constant, possibly cast (a bool mask).
MASKED_CONV: DFPattern = is_op("relax.nn.conv2d")(_DATA, is_op("relax.multiply")(_OPERAND_A, _OPERAND_B))


@dataclass(frozen=True)
class MaskedConv:
    """One matched `conv2d(x, weight * mask)`.

    Attributes:
        data: the conv's input.
        weight: the weight operand (a function parameter or a constant).
        mask: the mask operand, before any cast (a parameter or a constant).
        geometry: the layer's static shape, or None when `reason` says why there is none.
        reason: why compiled kernels cannot take this conv (None: they can).
    """

    data: relax.Expr
    weight: relax.Expr
    mask: relax.Expr
    geometry: ConvGeometry | None
    reason: str | None


def _name(expr: relax.Expr) -> str | None:
    return expr.name if isinstance(expr, relax.Var) else None


def _is_bool(expr: relax.Expr) -> bool:
    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "bool"


def _is_binary(expr: relax.Expr, values: Mapping[str, torch.Tensor]) -> bool:
    """Whether the factor's traced value holds only zeros and ones (a float mask)."""
    if isinstance(expr, tvm.ir.GenericConst):
        value = torch.from_numpy(expr.value.numpy())
    elif _name(expr) in values:
        value = values[str(_name(expr))]
    else:
        return False
    return bool(((value == 0) | (value == 1)).all())


def _weight_first(a: relax.Expr, b: relax.Expr, weights: set[str], values: Mapping[str, torch.Tensor]) -> bool:
    """Whether `a` (rather than `b`) is the weight of `a * b`.

    In order: a parameter known to be a sparse layer's weight; the other factor being bool, or
    holding only zeros and ones (no trained weight does); PyTorch's spelling `weight * mask`.
    """
    if (_name(a) in weights) != (_name(b) in weights):
        return _name(a) in weights
    for test in (_is_bool, lambda e: _is_binary(e, values)):
        if test(a) != test(b):
            return test(b)
    return True


def _ints(values: tvm.ir.Array) -> list[int]:
    return [int(v) for v in values]


def conv_geometry(data: relax.Expr, weight: relax.Expr, attrs: tvm.ir.Attrs) -> tuple[ConvGeometry | None, str | None]:
    """The conv's geometry, or why compiled kernels cannot take it."""
    strides, padding, dilation = _ints(attrs.strides), _ints(attrs.padding), _ints(attrs.dilation)
    if int(attrs.groups) != 1 or set(dilation) != {1}:
        return None, "grouped or dilated conv"
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
        return None, f"layout {attrs.data_layout}/{attrs.kernel_layout}, compiled kernels take NCHW/OIHW"
    if len(set(strides)) != 1 or len(set(padding)) != 1 or strides[0] not in (1, 2):
        return None, f"stride {strides} / padding {padding}: compiled kernels take a symmetric stride of 1 or 2"
    x_ty, w_ty = data.ty, weight.ty
    if str(x_ty.dtype) != "float32" or str(w_ty.dtype) != "float32":
        return None, f"dtype {x_ty.dtype}, compiled kernels take float32"
    x_shape, w_shape = list(x_ty.shape.values), list(w_ty.shape.values)
    if any(not isinstance(d, tvm.tirx.IntImm) for d in [*x_shape[1:], *w_shape]):
        return None, "symbolic channel, image or kernel size"
    try:
        return ConvGeometry.of((0, *_ints(x_shape[1:])), tuple(_ints(w_shape)), strides[0], padding[0]), None
    except MestError as err:
        return None, str(err)


def match_masked_conv(call: relax.Call, var2val: Mapping[relax.Var, relax.Expr], weights: set[str],
                      values: Mapping[str, torch.Tensor]) -> MaskedConv | None:
    """`call` as a masked conv, or None when it is not `conv2d(x, a * b)`.

    Args:
        call: a call in the function whose bindings `var2val` holds (`get_var2val`).
        weights: Relax names of parameters known to be sparse layers' weights.
        values: traced parameter values by Relax name (to tell a float mask from a weight).
    """
    if not MASKED_CONV.match(call, var2val):
        return None
    matched = MASKED_CONV.extract_matched_expr(call, var2val)
    a, b = matched[_LEAF_A], matched[_LEAF_B]
    weight, mask = (a, b) if _weight_first(a, b, weights, values) else (b, a)
    data = matched[_DATA]
    geometry, reason = conv_geometry(data, weight, call.attrs)
    return MaskedConv(data=data, weight=weight, mask=mask, geometry=geometry, reason=reason)
