"""Batch norm in training mode as two kernels, forward and backward, with its gradient registered.

Relax has no gradient for `batch_norm`; decomposed into `mean`, `variance`, `subtract`, `divide`
and their gradients it reads and writes each activation a dozen times per step. Here the traced
`aten._native_batch_norm_legit.no_stats` (batch statistics, no running ones: those are updated in
the traced graph from the returned mean and inverse deviation) becomes `call_tir_with_grad` of a
forward kernel (two statistics passes and one normalising pass) whose gradient is one backward
kernel (one pass for the two sums, one for the input gradient), as PyTorch's own kernels do.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import relax, te, tirx

_GRAD_NAME = "mest_batch_norm"
#: What the importer calls the op (`node.target.__name__`).
OP_NAME = "_native_batch_norm_legit.no_stats"


def _forward(shape: tuple[int, ...], eps: float) -> tirx.PrimFunc:
    n, c, h, w = shape
    count = float(n * h * w)
    x = te.placeholder(shape, "float32", name="x")
    gamma, beta = te.placeholder((c,), "float32", name="gamma"), te.placeholder((c,), "float32", name="beta")
    rn, rh, rw = te.reduce_axis((0, n), "rn"), te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")
    total = te.compute((c,), lambda k: te.sum(x[rn, k, rh, rw], axis=[rn, rh, rw]), name="total")
    mean = te.compute((c,), lambda k: total[k] / count, name="mean")
    sn, sh, sw = te.reduce_axis((0, n), "sn"), te.reduce_axis((0, h), "sh"), te.reduce_axis((0, w), "sw")
    squares = te.compute((c,), lambda k: te.sum((x[sn, k, sh, sw] - mean[k]) * (x[sn, k, sh, sw] - mean[k]),
                                                axis=[sn, sh, sw]), name="squares")
    rstd = te.compute((c,), lambda k: 1.0 / te.sqrt(squares[k] / count + eps), name="rstd")
    y = te.compute(shape, lambda i, k, a, b: (x[i, k, a, b] - mean[k]) * (rstd[k] * gamma[k]) + beta[k], name="y")
    return te.create_prim_func([x, gamma, beta, y, mean, rstd]).without_attr("global_symbol")


def _backward(shape: tuple[int, ...]) -> tirx.PrimFunc:
    n, c, h, w = shape
    count = float(n * h * w)
    dy, x = te.placeholder(shape, "float32", name="dy"), te.placeholder(shape, "float32", name="x")
    gamma = te.placeholder((c,), "float32", name="gamma")
    mean, rstd = te.placeholder((c,), "float32", name="mean"), te.placeholder((c,), "float32", name="rstd")
    rn, rh, rw = te.reduce_axis((0, n), "rn"), te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")
    dbeta = te.compute((c,), lambda k: te.sum(dy[rn, k, rh, rw], axis=[rn, rh, rw]), name="dbeta")
    sn, sh, sw = te.reduce_axis((0, n), "sn"), te.reduce_axis((0, h), "sh"), te.reduce_axis((0, w), "sw")
    centred = te.compute((c,), lambda k: te.sum(dy[sn, k, sh, sw] * (x[sn, k, sh, sw] - mean[k]), axis=[sn, sh, sw]),
                         name="dy_centred")
    dgamma = te.compute((c,), lambda k: centred[k] * rstd[k], name="dgamma")
    dx = te.compute(shape, lambda i, k, a, b: gamma[k] * rstd[k] * (
        dy[i, k, a, b] - dbeta[k] / count - (x[i, k, a, b] - mean[k]) * rstd[k] * dgamma[k] / count), name="dx")
    return te.create_prim_func([dy, x, gamma, mean, rstd, dx, dgamma, dbeta]).without_attr("global_symbol")


def convert(node: Any, importer: Any) -> relax.Var:
    """The importer's conversion of `aten._native_batch_norm_legit.no_stats(x, w, b, training, momentum, eps)`."""
    x = importer.env[node.args[0]]
    gamma, beta = importer.env[node.args[1]], importer.env[node.args[2]]
    eps = float(node.args[5]) if len(node.args) > 5 else float(node.kwargs.get("eps", 1e-5))
    shape = tuple(int(d) for d in x.ty.shape.values)
    if len(shape) != 4 or not bool(node.args[3] if len(node.args) > 3 else True):
        raise NotImplementedError("the compiled step's batch norm takes NCHW activations in training mode")
    bb = importer.block_builder
    name = f"batch_norm_fwd_{'x'.join(map(str, shape))}"
    forward = bb.add_func(_forward(shape, eps), name)
    stats = relax.TensorType([shape[1]], "float32")
    out = [relax.TensorType(list(shape), "float32"), stats, stats]
    return bb.emit(relax.call_tir_with_grad(forward, [x, gamma, beta], out, te_grad_name=_GRAD_NAME,
                                            te_grad_kwargs={"shape": list(shape)}))


@tvm_ffi.register_global_func(f"tvm.relax.te_grad._register.{_GRAD_NAME}", override=True)
def _gradient(orig_var: relax.Var, call: relax.Call, adjoint: relax.Expr, ctx: relax.BlockBuilder) -> relax.Expr:
    """Adjoints of `(x, gamma, beta)` from the output's adjoint (the statistics feed no loss)."""
    x, gamma, _ = call.args[1].fields
    shape = tuple(int(d) for d in call.attrs.te_grad_kwargs["shape"])
    dy = ctx.emit(relax.TupleGetItem(adjoint, 0)) if isinstance(adjoint.ty, relax.TupleType) else adjoint
    mean, rstd = ctx.emit(relax.TupleGetItem(orig_var, 1)), ctx.emit(relax.TupleGetItem(orig_var, 2))
    backward = ctx.add_func(_backward(shape), f"batch_norm_bwd_{'x'.join(map(str, shape))}")
    stats = relax.TensorType([shape[1]], "float32")
    grads = ctx.emit(relax.call_tir(backward, [dy, x, gamma, mean, rstd],
                                    [relax.TensorType(list(shape), "float32"), stats, stats]))
    return ctx.emit(relax.Tuple([relax.TupleGetItem(grads, 0), relax.TupleGetItem(grads, 1),
                                 relax.TupleGetItem(grads, 2)]))
