"""The pass of the compiled training step: masked convs become scheme kernels with their gradients.

Each `conv2d(x, weight * mask)` of a sparse layer whose scheme compiles becomes
`call_tir_with_grad` of the scheme's forward kernel; the registered gradient
(`tvm.relax.te_grad._register.mest_sparse_conv`) emits `call_tir` of the input-gradient and
masked weight-gradient kernels, so Relax's `Gradient` pass differentiates the step with our
kernels and never sees a dense conv of the layer. The layer's weight parameter becomes its packed
`values` (capacity rows, the rows past the mask's units zero) and the format's index buffers become
parameters too: a mutation that fits the capacity is a new argument list for the same executable.
`call_tir_with_grad` passes its arguments to the forward kernel only, so the forward is wrapped to
take every buffer of the layer and the row mask (the gradient finds its own among the call's
arguments: `Gradient` copies the function, so only the call's arguments are in scope there).

A sparse layer that cannot compile (no family, no kernel for its geometry) stays a dense conv with
its mask as a runtime input (a mutation must reach it too), and the report says why.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import tvm
import tvm_ffi
from tvm import relax, tirx

from mest_compile.compiler.families import KernelFamily, PackedFormat, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.graph.match import conv_geometry, match_masked_conv
from mest_compile.compiler.graph.rewrite import kernel_name
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime.cache import KernelCache
from mest_compile.compiler.runtime.compiled import tuned_schedules
from mest_compile.compiler.runtime.gate import KernelGateError
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.step.schedule import mark_scheduled
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError

_GRAD_NAME = "mest_sparse_conv"
#: The family whose kernels run the model's dense convs: channel kernels with every filter kept are a
#: dense conv, and its `values` are then the weight itself.
DENSE_FAMILY = "channel"
#: Layers being differentiated, by the key their `call_tir_with_grad` carries (filled by `lower`,
#: read by the gradient handler, emptied after `Gradient`).
_PENDING: dict[str, tuple[KernelFamily, tuple[str, ...], tvm.ir.GlobalVar, tvm.ir.GlobalVar]] = {}
_KEYS = itertools.count()


@dataclass(frozen=True)
class StepKernels:
    """A family's scheduled kernels of one geometry, as the step needs them (TIR and the packing layout)."""

    family: KernelFamily
    geometry: ConvGeometry
    tiles: Any
    modules: Mapping[str, tvm.IRModule]

    def pack(self, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack `mask` in the layout these kernels read."""
        return self.family.pack_with(self.geometry, self.tiles, mask, capacity)


@dataclass
class SparseSlot:
    """One sparse layer on compiled kernels inside the step.

    Attributes:
        layer: the PyTorch weight name.
        family: the scheme's kernel family.
        fmt: the layer's packed format (capacity rows).
        buffers: the format's index buffers the step takes, forward's first.
        values: the `values` parameter (capacity rows); `rows`: 1 for rows in use, 0 past them
            (the weight gradient's rows past the mask are not written by the kernel).
        params: the index buffers' parameters, by buffer name.
    """

    layer: str
    family: KernelFamily
    fmt: PackedFormat
    buffers: tuple[str, ...]
    values: relax.Var
    rows: relax.Var
    params: dict[str, relax.Var] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        """Rows of `values`."""
        return int(self.values.ty.shape.values[0])


@dataclass(frozen=True)
class DenseMasked:
    """A sparse layer left as the dense conv: its mask is a runtime input `mask` (float32)."""

    layer: str
    reason: str
    mask: relax.Var


@tvm_ffi.register_global_func(f"tvm.relax.te_grad._register.{_GRAD_NAME}", override=True)
def _sparse_conv_gradient(orig_var: relax.Var, call: relax.Call, dy: relax.Expr, ctx: relax.BlockBuilder) -> relax.Expr:
    """The adjoints of `call_tir_with_grad(forward, (x, values, *buffers))`: input and values gradients."""
    family, order, dgrad, wgrad = _PENDING[str(call.attrs.te_grad_kwargs["key"])]
    x, values, *buffers, rows = call.args[1].fields
    by_name = dict(zip(order, buffers, strict=True))
    dx = ctx.emit(relax.call_tir(dgrad, [dy, values, *(by_name[b] for b in family.buffers["dgrad"])], x.ty))
    dvalues = ctx.emit(relax.call_tir(wgrad, [x, dy, *(by_name[b] for b in family.buffers["wgrad"])], values.ty))
    dvalues = ctx.emit(relax.op.multiply(dvalues, rows))
    zeros = [ctx.emit(relax.op.zeros_like(b)) for b in (*buffers, rows)]
    return ctx.emit(relax.Tuple([dx, dvalues, *zeros]))


def _with_extra_buffers(func: tirx.PrimFunc, extra: list[tirx.Buffer]) -> tirx.PrimFunc:
    """`func` taking `extra` (unused) buffers before its output."""
    params = list(func.params)
    return tirx.PrimFunc([*params[:-1], *extra, params[-1]], func.body, func.ret_type, func.attrs)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


@relax.expr_functor.mutator
class _Lowering(relax.PyExprMutator):
    """Replaces each sparse layer's masked conv (see the module docstring)."""

    def __init__(self, mod: tvm.IRModule, func: relax.Function, layers: Mapping[str, Any],
                 formats: Mapping[str, PackedFormat], cache: KernelCache, target: Target,
                 records: TunedChoices | None, capacity: Any, local: bool) -> None:
        super().__init__(mod)
        self.local = local
        self.var2val = relax.analysis.get_var2val(func)
        self.layers, self.formats, self.cache, self.target = layers, formats, cache, target
        self.records, self.capacity = records, capacity
        self.slots: dict[str, SparseSlot] = {}
        self.dense: dict[str, DenseMasked] = {}
        self.funcs: dict[tuple[str, str, ConvGeometry], tvm.ir.GlobalVar] = {}
        self.keys: list[str] = []
        # Dense convs (a weight parameter, no mask) running on a family's kernels, by weight parameter.
        self.dense_kernels: dict[str, str] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        new = self.visit_expr_post_order(call)
        matched = match_masked_conv(call, self.var2val, set(self.layers), {})
        if matched is None and _is_dense_conv(call):
            dense = self._dense(new, call, call.args[1])
            return new if dense is None else dense
        if matched is None or not isinstance(matched.weight, relax.Var) or matched.weight.name not in self.layers:
            return new
        relax_name = matched.weight.name
        layer_name, module = self.layers[relax_name]
        try:
            return self._sparse(new, matched.geometry, matched.reason, relax_name, layer_name, module, call)
        except MestError as err:
            mask = relax.Var(f"{relax_name}_mask", matched.weight.ty)
            self.dense[relax_name] = DenseMasked(layer=layer_name, reason=str(err), mask=mask)
            weight = new.args[1].args[0] if _is_weight_first(new.args[1], matched.weight) else new.args[1].args[1]
            return relax.Call(new.op, [new.args[0], relax.op.multiply(weight, mask)], new.attrs)

    def _sparse(self, new: relax.Call, geo: ConvGeometry | None, reason: str | None, relax_name: str,
                layer_name: str, module: Any, call: relax.Call) -> relax.Expr:
        if geo is None:
            raise MestError(reason or "no geometry")
        if relax_name in self.slots:
            raise MestError("the weight is used by two convs")
        family = family_for(module.scheme.name)
        why = family.supports(geo)
        if why is not None:
            raise MestError(f"scheme {family.scheme_name!r} cannot compile this layer: {why}")
        kernels = self._kernels(family, geo)
        fmt = self.formats.get(layer_name)
        if fmt is None or fmt.geometry != geo or fmt.capacity < family.units(module.mask):
            fmt = kernels.pack(module.mask, capacity=self.capacity(family.units(module.mask)))
        else:
            fmt.repack_(module.mask)
        values = fmt.values(module.weight.detach())
        # Rows of `values`: the capacity, or exactly the units where padded rows would be computed.
        capacity = fmt.nnz if family.visits_every_value_row else fmt.capacity
        order = _buffer_order(family)
        params = {b: relax.Var(f"{relax_name}_{b}", relax.TensorType(list(getattr(fmt, b).shape), _dtype(getattr(fmt, b))))
                  for b in order}  # fmt: skip
        row_shape = [capacity, *([1] * (values.dim() - 1))]
        slot = SparseSlot(layer=layer_name, family=family, fmt=fmt, buffers=tuple(order),
                          values=relax.Var(f"{relax_name}_values", relax.TensorType([capacity, *values.shape[1:]], "float32")),
                          rows=relax.Var(f"{relax_name}_rows", relax.TensorType(row_shape, "float32")), params=params)
        self.slots[relax_name] = slot
        return self._kernel_call(family, kernels, geo, new.args[0], slot.values, [params[b] for b in order], slot.rows,
                                 call, relax_name)

    def _dense(self, new: relax.Call, call: relax.Call, weight: relax.Var) -> relax.Expr | None:
        """A dense conv on the channel kernels with every filter kept (`values` is the weight itself), or None."""
        geo, reason = conv_geometry(call.args[0], weight, call.attrs)
        family = family_for(DENSE_FAMILY)
        if geo is None or reason is not None or family.supports(geo) is not None:
            return None
        try:
            kernels = self._kernels(family, geo)
        except MestError:
            return None
        fmt = kernels.pack(torch.ones(tuple(int(d) for d in weight.ty.shape.values), dtype=torch.bool))
        buffers = [relax.const(getattr(fmt, b).numpy()) for b in _buffer_order(family)]
        rows = relax.const(np.ones((fmt.nnz, 1, 1, 1), dtype="float32"))
        self.dense_kernels[weight.name] = family.name
        return self._kernel_call(family, kernels, geo, new.args[0], new.args[1], buffers, rows, call, weight.name)

    def _kernels(self, family: KernelFamily, geo: ConvGeometry) -> StepKernels:
        """The family's kernels of `geo`: gated here when the target runs here, else scheduled only (a
        foreign CPU's step is checked where it runs)."""
        if not self.local:
            tiles, modules, _ = tuned_schedules(family, geo, self.target, self.records)
            return StepKernels(family, geo, tiles, modules)
        try:
            kernels = self.cache.kernels_for(family, geo, self.target, self.records)
        except KernelGateError as err:
            raise MestError(str(err)) from None
        return StepKernels(family, geo, kernels.tiles, kernels.modules)

    def _kernel_call(self, family: KernelFamily, kernels: StepKernels, geo: ConvGeometry, data: relax.Expr,
                     values: relax.Expr, buffers: list[relax.Expr], rows: relax.Expr, call: relax.Call,
                     name: str) -> relax.Expr:
        """`call_tir_with_grad` of the forward kernel over every buffer, its gradient registered under a key."""
        order = _buffer_order(family)
        forward = self._func(family, kernels, geo, "forward", [*(b for n, b in zip(order, buffers, strict=True)
                                                                 if n not in family.buffers["forward"]), rows])
        dgrad, wgrad = self._func(family, kernels, geo, "dgrad"), self._func(family, kernels, geo, "wgrad")
        key = f"{next(_KEYS)}:{name}"
        _PENDING[key] = (family, tuple(order), dgrad, wgrad)
        self.keys.append(key)
        out = relax.TensorType(list(call.ty.shape.values), "float32")
        return relax.call_tir_with_grad(forward, [data, values, *buffers, rows], out,
                                        te_grad_name=_GRAD_NAME, te_grad_kwargs={"key": key})

    def _func(self, family: KernelFamily, kernels: StepKernels, geo: ConvGeometry, phase: str,
              extra: list[relax.Expr] | None = None) -> tvm.ir.GlobalVar:
        """The scheduled kernel of `phase` added once per (scheme, phase, geometry); the forward takes `extra`
        (any shape: layers of one geometry share it with other capacities)."""
        key = (family.name, phase, geo)
        if key not in self.funcs:
            func = kernels.modules[phase]["main"]
            if extra is not None:
                func = _with_extra_buffers(func, [_any_shape(e, f"unused{i}") for i, e in enumerate(extra)])
            name = kernel_name(family, geo, self.target.family, phase=phase)
            self.funcs[key] = self.builder_.add_func(mark_scheduled(func).with_attr("global_symbol", name), name)
        return self.funcs[key]


def _buffer_order(family: KernelFamily) -> list[str]:
    """Every index buffer of the family's kernels once, the forward's first."""
    order = [*family.buffers["forward"]]
    for phase in PHASES:
        order += [b for b in family.buffers[phase] if b not in order]
    return order


def _any_shape(expr: relax.Expr, name: str) -> tirx.Buffer:
    ty = expr.ty
    return tirx.decl_buffer([tirx.Var(f"{name}_d{i}", "int64") for i in range(len(ty.shape.values))], str(ty.dtype),
                            name=name)


def _is_dense_conv(call: relax.Call) -> bool:
    return (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d" and len(call.args) == 2
            and isinstance(call.args[1], relax.Var) and not isinstance(call.args[1], relax.DataflowVar))


def _is_weight_first(product: relax.Call, weight: relax.Var) -> bool:
    first = product.args[0]
    return isinstance(first, relax.Var) and first.same_as(weight)


@dataclass
class Lowered:
    """The step's `main` with sparse layers on kernels, and what each sparse layer became."""

    module: tvm.IRModule
    slots: dict[str, SparseSlot]
    dense: dict[str, DenseMasked]
    keys: list[str]
    #: Dense convs on a family's kernels: weight parameter -> family.
    dense_kernels: dict[str, str] = field(default_factory=dict)

    def release(self) -> None:
        """Forget the layers' gradient entries (after `Gradient` ran)."""
        for key in self.keys:
            _PENDING.pop(key, None)


def lower(module: tvm.IRModule, layers: Mapping[str, Any], formats: Mapping[str, PackedFormat], cache: KernelCache,
          target: Target, records: TunedChoices | None, capacity: Any, *, local: bool = True) -> Lowered:
    """Replace the masked convs of `module["main"]` (see the module docstring).

    Args:
        layers: Relax weight parameter name -> (PyTorch weight name, its `SparseConv2d`).
        formats: packed formats to reuse by layer (a rebuild keeps capacities that still fit).
        capacity: `units -> capacity` of a layer packed afresh (the recompile policy's).
        local: the target runs here, so each kernel set passes the correctness gate first.
    """
    func = module["main"]
    lowering = _Lowering(module, func, layers, formats, cache, target, records, capacity, local)
    body = lowering.visit_expr(func.body)
    params: list[relax.Var] = []
    for p in func.params:
        slot = lowering.slots.get(p.name)
        dense = lowering.dense.get(p.name)
        if slot is not None:
            params += [slot.values, slot.rows, *(slot.params[b] for b in slot.buffers)]
        else:
            params.append(p)
            if dense is not None:
                params.append(dense.mask)
    out = lowering.builder_.get()
    # The replaced `weight * mask` bindings still name the weight: drop them before the weight goes.
    old = {p.name for p in func.params}
    every = [*func.params, *(p for p in params if p.name not in old)]
    body = relax.analysis.remove_all_unused(relax.Function(every, body, func.ret_ty)).body
    main = relax.Function(params, body, func.ret_ty, func.is_pure, attrs=func.attrs)
    out["main"] = main.without_attr("params") if "params" in (func.attrs or {}) else main
    return Lowered(module=out, slots=lowering.slots, dense=lowering.dense, keys=lowering.keys,
                   dense_kernels=lowering.dense_kernels)
