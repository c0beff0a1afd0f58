"""Batch norm in training mode as two kernels, forward and backward, with its gradient registered.

Relax has no gradient for `batch_norm`; decomposed into `mean`, `variance`, `subtract`, `divide`
and their gradients it reads and writes each activation a dozen times per step. Here the traced
`aten._native_batch_norm_legit.no_stats` (batch statistics, no running ones: those are updated in
the traced graph from the returned mean and inverse deviation) becomes `call_tir_with_grad` of a
forward kernel (two statistics passes and one normalising pass) whose gradient is one backward
kernel (one pass for the two sums, one for the input gradient), as PyTorch's own kernels do.

Both kernels are written per channel: one parallel task takes a channel through all its passes
while its slice (64x32x32 floats: 256 KiB) stays in L2, with vector accumulators. Measured on
ResNet-32 at batch 64 (AMD EPYC Zen 4, 2 threads): 64x32x32x32 forward 2.4 -> 0.32 ms and backward
2.8 -> 0.67 ms against the stage-per-pass TE version that dlight and `_ParallelLoops` scheduled
(three and two sweeps over all channels, each reduction a scalar chain).
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import relax, tirx
from tvm.script import tirx as T

from mest_compile.compiler.step.schedule import mark_scheduled

_GRAD_NAME = "mest_batch_norm"
#: What the importer calls the op (`node.target.__name__`).
OP_NAME = "_native_batch_norm_legit.no_stats"


def _lanes(width: int) -> int:
    """Floats per vector accumulator: a whole AVX-512 vector where the rows allow."""
    return 16 if width % 16 == 0 else 8 if width % 8 == 0 else 1


def _forward(shape: tuple[int, ...], eps: float) -> tirx.PrimFunc:
    """`(x, gamma, beta) -> (y, mean, rstd)`, one channel per parallel task, all three passes on it."""
    N, C, H, W = shape
    V = _lanes(W)
    WV, COUNT, EPS = W // V, float(N * H * W), float(eps)

    @T.prim_func(s_tir=True, private=True)
    def batch_norm_fwd(x: T.Buffer((N, C, H, W), "float32"), gamma: T.Buffer((C,), "float32"),
                       beta: T.Buffer((C,), "float32"), y: T.Buffer((N, C, H, W), "float32"),
                       mean: T.Buffer((C,), "float32"), rstd: T.Buffer((C,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for k in T.parallel(C):
            with T.sblock("bn"):
                vk = T.axis.spatial(C, k)
                T.reads(x[0:N, vk, 0:H, 0:W], gamma[vk], beta[vk])
                T.writes(y[0:N, vk, 0:H, 0:W], mean[vk], rstd[vk])
                acc = T.sblock_alloc_buffer((V,), "float32", scope="local")
                st = T.sblock_alloc_buffer((3,), "float32", scope="local")  # mean, rstd, rstd * gamma
                for l in T.vectorized(V):
                    acc[l] = T.float32(0)
                for n, a, wv in T.grid(N, H, WV):
                    for l in T.vectorized(V):
                        acc[l] = acc[l] + x[n, vk, a, wv * V + l]
                st[0] = T.float32(0)
                for l in range(V):
                    st[0] = st[0] + acc[l]
                st[0] = st[0] / T.float32(COUNT)
                for l in T.vectorized(V):
                    acc[l] = T.float32(0)
                for n, a, wv in T.grid(N, H, WV):
                    for l in T.vectorized(V):
                        acc[l] = acc[l] + (x[n, vk, a, wv * V + l] - st[0]) * (x[n, vk, a, wv * V + l] - st[0])
                st[1] = T.float32(0)
                for l in range(V):
                    st[1] = st[1] + acc[l]
                st[1] = T.float32(1) / T.sqrt(st[1] / T.float32(COUNT) + T.float32(EPS))
                st[2] = st[1] * gamma[vk]
                for n, a, wv in T.grid(N, H, WV):
                    for l in T.vectorized(V):
                        y[n, vk, a, wv * V + l] = (x[n, vk, a, wv * V + l] - st[0]) * st[2] + beta[vk]
                mean[vk] = st[0]
                rstd[vk] = st[1]

    return mark_scheduled(batch_norm_fwd)


def _backward(shape: tuple[int, ...]) -> tirx.PrimFunc:
    """`(dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta)`, one channel per parallel task: one pass for
    both sums, one for dx."""
    N, C, H, W = shape
    V = _lanes(W)
    WV, COUNT = W // V, float(N * H * W)

    @T.prim_func(s_tir=True, private=True)
    def batch_norm_bwd(dy: T.Buffer((N, C, H, W), "float32"), x: T.Buffer((N, C, H, W), "float32"),
                       gamma: T.Buffer((C,), "float32"), mean: T.Buffer((C,), "float32"),
                       rstd: T.Buffer((C,), "float32"), dx: T.Buffer((N, C, H, W), "float32"),
                       dgamma: T.Buffer((C,), "float32"), dbeta: T.Buffer((C,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for k in T.parallel(C):
            with T.sblock("bn_grad"):
                vk = T.axis.spatial(C, k)
                T.reads(dy[0:N, vk, 0:H, 0:W], x[0:N, vk, 0:H, 0:W], gamma[vk], mean[vk], rstd[vk])
                T.writes(dx[0:N, vk, 0:H, 0:W], dgamma[vk], dbeta[vk])
                sdy = T.sblock_alloc_buffer((V,), "float32", scope="local")
                sdx = T.sblock_alloc_buffer((V,), "float32", scope="local")
                st = T.sblock_alloc_buffer((4,), "float32", scope="local")  # sum dy, sum dy*(x-mean), two terms
                for l in T.vectorized(V):
                    sdy[l] = T.float32(0)
                    sdx[l] = T.float32(0)
                for n, a, wv in T.grid(N, H, WV):
                    for l in T.vectorized(V):
                        sdy[l] = sdy[l] + dy[n, vk, a, wv * V + l]
                        sdx[l] = sdx[l] + dy[n, vk, a, wv * V + l] * (x[n, vk, a, wv * V + l] - mean[vk])
                st[0] = T.float32(0)
                st[1] = T.float32(0)
                for l in range(V):
                    st[0] = st[0] + sdy[l]
                    st[1] = st[1] + sdx[l]
                dbeta[vk] = st[0]
                dgamma[vk] = st[1] * rstd[vk]
                st[2] = st[0] / T.float32(COUNT)
                st[3] = rstd[vk] * st[1] * rstd[vk] / T.float32(COUNT)
                for n, a, wv in T.grid(N, H, WV):
                    for l in T.vectorized(V):
                        dx[n, vk, a, wv * V + l] = gamma[vk] * rstd[vk] * (
                            dy[n, vk, a, wv * V + l] - st[2] - (x[n, vk, a, wv * V + l] - mean[vk]) * st[3])

    return mark_scheduled(batch_norm_bwd)


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
