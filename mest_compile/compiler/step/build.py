"""Build the compiled training step: gradient of the lowered step, SGD appended, one `train_step`.

`train_step(x, onehot, lr, *trainable, *momenta, *inputs) -> (loss, logits, *new_trainable,
*new_momenta, *new_states, *gradients)`, where `trainable` are the model's parameters with each
compiled sparse layer's weight replaced by its packed `values`, and `inputs` everything else the
step reads (running statistics, index buffers, row masks, masks of dense-masked layers). The
optimizer is PyTorch's SGD (momentum, weight decay, no dampening); on packed values it updates
and keeps momentum only where the mask is, so pruned weights need no re-masking.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import tvm
from tvm import relax

from mest_compile.compiler.step import gradients  # noqa: F401  (PyTorch-convention gradients, registered)
from mest_compile.compiler.step.schedule import step_pipeline
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.runtime.cache import CACHE, KernelCache
from mest_compile.compiler.runtime.policy import RecompilePolicy
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.step.sparse import Lowered, lower
from mest_compile.compiler.step.trace import TracedStep, trace_step
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError, last_line
from mest_compile.sparsity.module import SparseConv2d


@dataclass(frozen=True)
class Sgd:
    """PyTorch SGD's settings the step bakes in (the learning rate is an input: schedules change it)."""

    momentum: float
    weight_decay: float

    @classmethod
    def of(cls, optimizer_name: str, optimizer: torch.optim.Optimizer, who: str, hint: str = "") -> Sgd:
        """The settings of a run's optimizer, or a one-line refusal saying that `who` cannot run it
        (`hint`: where the other optimizers run).

        Raises:
            MestError: the optimizer is not SGD, or uses dampening or Nesterov momentum.
        """
        if optimizer_name != "sgd":
            raise MestError(f"{who} trains with SGD, not --optimizer {optimizer_name}{hint}")
        group = optimizer.param_groups[0]
        if group.get("nesterov") or group.get("dampening"):
            raise MestError(f"{who} runs SGD without dampening or Nesterov momentum")
        return cls(momentum=float(group["momentum"]), weight_decay=float(group["weight_decay"]))


@dataclass(frozen=True)
class Argument:
    """One parameter of the step after `(x, onehot)`: what it holds.

    `kind`: "param" (a model parameter, `name` its PyTorch name), "values" / "rows" / "buffer"
    (a compiled sparse layer `name`'s packed values, row mask, or index buffer `field`), "state"
    (a running-statistics buffer), "mask" (a dense-masked sparse layer's mask).
    """

    kind: str
    name: str
    field: str = ""

    @property
    def trainable(self) -> bool:
        """Whether SGD updates it (it has a gradient and a momentum)."""
        return self.kind in ("param", "values")


@dataclass
class BuiltStep:
    """A compiled `train_step` and the meaning of its arguments."""

    vm: Any
    executable: Any
    module: tvm.IRModule
    arguments: list[Argument]
    num_states: int
    build_seconds: float

    @property
    def trainable(self) -> list[Argument]:
        """The arguments SGD updates, in `train_step`'s order."""
        return [a for a in self.arguments if a.trainable]

    @property
    def inputs(self) -> list[Argument]:
        """The other arguments, in `train_step`'s order."""
        return [a for a in self.arguments if not a.trainable]


def classify(lowered: Lowered, param_names: dict[str, str], states: tuple[str, ...], n_inputs: int) -> list[Argument]:
    """What each of the lowered `main`'s parameters after the inputs holds."""
    by_var: dict[str, Argument] = {}
    for relax_name, slot in lowered.slots.items():
        by_var[slot.values.name] = Argument("values", slot.layer)
        by_var[slot.rows.name] = Argument("rows", slot.layer)
        for buffer, var in slot.params.items():
            by_var[var.name] = Argument("buffer", slot.layer, buffer)
    for dense in lowered.dense.values():
        by_var[dense.mask.name] = Argument("mask", dense.layer)
    out = []
    for p in lowered.module["main"].params[n_inputs:]:
        if p.name in by_var:
            out.append(by_var[p.name])
        else:
            name = param_names[p.name]
            out.append(Argument("state" if name in states else "param", name))
    return out


def _returned_tuple(func: relax.Function) -> relax.Function:
    """`func` returning a literal tuple of its outputs (`Gradient` differentiates one field of it)."""
    blocks = list(func.body.blocks)
    ret = func.body.body
    bindings, fields = [], None
    for binding in blocks[-1].bindings:
        if binding.var.same_as(ret) and isinstance(binding.value, relax.Tuple):
            fields = list(binding.value.fields)
        else:
            bindings.append(binding)
    if fields is None:
        raise MestError("the traced step does not end in a tuple of outputs")
    outs = []
    for i, value in enumerate(fields):
        out = relax.Var(f"output{i}", value.ty)
        bindings.append(relax.VarBinding(out, value))
        outs.append(out)
    blocks[-1] = relax.DataflowBlock(bindings)
    return relax.Function(func.params, relax.SeqExpr(blocks, relax.Tuple(outs)), func.ret_ty, func.is_pure,
                          attrs=func.attrs)


@relax.expr_functor.mutator
class _PlainCallTir(relax.PyExprMutator):
    """`call_tir_with_grad` -> `call_tir` once differentiated (the VM cannot run the former)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir_with_grad":
            out = call.ty_args[0]
            return relax.call_tir(call.args[0], call.args[1], list(out.fields) if isinstance(out, relax.TupleType) else out)
        return call


def _append_sgd(mod: tvm.IRModule, arguments: list[Argument], num_states: int, sgd: Sgd) -> tvm.IRModule:
    """Add `train_step` (see the module docstring) calling `main_adjoint` and SGD."""
    adjoint = mod.get_global_var("main_adjoint")
    main = mod["main_adjoint"]
    x, onehot, *rest = main.params
    fresh = {p.name: relax.Var(p.name, p.ty) for p in main.params}
    trainable = [fresh[p.name] for p, a in zip(rest, arguments, strict=True) if a.trainable]
    others = [fresh[p.name] for p, a in zip(rest, arguments, strict=True) if not a.trainable]
    momenta = [relax.Var(f"{p.name}_momentum", p.ty) for p in trainable]
    lr = relax.Var("lr", relax.TensorType([], "float32"))
    bb = relax.BlockBuilder(mod)
    params = [fresh[x.name], fresh[onehot.name], lr, *trainable, *momenta, *others]
    with bb.function("train_step", params):
        out = bb.emit(relax.Call(adjoint, [fresh[p.name] for p in main.params]))
        forward, grads = bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))
        new_params, new_momenta, grad_list = [], [], []
        for i, (p, v) in enumerate(zip(trainable, momenta, strict=True)):
            g = bb.emit(relax.TupleGetItem(grads, i))
            grad_list.append(g)
            step = bb.emit(relax.op.add(g, relax.op.multiply(p, relax.const(sgd.weight_decay, "float32")))) \
                if sgd.weight_decay else g
            if sgd.momentum:
                step = bb.emit(relax.op.add(relax.op.multiply(v, relax.const(sgd.momentum, "float32")), step))
            new_momenta.append(step)
            new_params.append(bb.emit(relax.op.subtract(p, relax.op.multiply(step, lr))))
        results = [bb.emit(relax.TupleGetItem(forward, i)) for i in range(2 + num_states)]
        bb.emit_func_output(relax.Tuple([*results[:2], *new_params, *new_momenta, *results[2:], *grad_list]))
    return bb.get()


def build_step(lowered: Lowered, arguments: list[Argument], num_states: int, target: Target, sgd: Sgd,
               *, local: bool = True) -> BuiltStep:
    """Differentiate the lowered step, append SGD, and compile it for `target`.

    Raises:
        MestError: an op of the model has no Relax gradient (naming it), or the build failed.
    """
    start = time.perf_counter()
    mod = lowered.module
    mod["main"] = _returned_tuple(mod["main"])
    n_in = 2
    params = mod["main"].params[n_in:]
    require = [p for p, a in zip(params, arguments, strict=True) if a.trainable]
    try:
        mod = relax.transform.Gradient("main", require_grads=require, target_index=0)(mod)
    except (RuntimeError, ValueError, TypeError) as err:
        raise MestError(f"the training step cannot be differentiated in Relax: {last_line(err)}") from None
    finally:
        lowered.release()
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _PlainCallTir(mod).visit_expr(func)
    mod = _append_sgd(mod, arguments, num_states, sgd)
    try:
        executable = tvm.compile(mod, target=target.tvm, relax_pipeline=step_pipeline(target))
    except (RuntimeError, ValueError, TypeError) as err:
        raise MestError(f"the training step did not build for {target.name}: {last_line(err)}") from None
    # A foreign CPU's step is exported and run there (`step/board.py`), not loaded here.
    vm = relax.VirtualMachine(executable, tvm.cpu()) if local else None
    return BuiltStep(vm=vm, executable=executable, module=mod, arguments=arguments, num_states=num_states,
                     build_seconds=time.perf_counter() - start)


def runs_here(target: Target) -> bool:
    """Whether `target` is this machine's kind of CPU (its code can be loaded into this process)."""
    triple = str(target.tvm.attrs.get("mtriple", "")) if target.tvm.attrs is not None else ""
    return target.family.name == "cpu" and (not triple or triple.startswith(platform.machine()))


def compile_step(model: torch.nn.Module, layers: Mapping[str, SparseConv2d], batch_shape: tuple[int, ...],
                 num_classes: int, target: Target, sgd: Sgd, *, formats: Mapping[str, PackedFormat] | None = None,
                 cache: KernelCache | None = None, records: TunedChoices | None = None,
                 capacity: Callable[[int], int] | None = None, traced: TracedStep | None = None) -> CompiledStep:
    """Trace, lower and build the training step of `model` for batches of `batch_shape` on `target`.

    Args:
        layers: the model's sparse layers by weight name (`sparse_layers(model)`).
        formats: packed formats to reuse by layer (capacities kept while the masks fit).
        capacity: `units -> capacity` of a layer packed afresh (default: the recompile policy's).
        traced: a trace of the same model and batch shape to reuse.
    """
    local = runs_here(target)
    if traced is None:
        with torch.random.fork_rng(devices=[]):
            traced = trace_step(model, batch_shape, num_classes)
    relax_layers = {relax_name: (name, layers[name]) for relax_name, name in traced.param_names.items() if name in layers}
    with torch.random.fork_rng(devices=[]):
        lowered = lower(tvm.IRModule(dict(traced.module.functions)), relax_layers, formats or {},
                        cache if cache is not None else CACHE, target, records,
                        capacity or RecompilePolicy().capacity, local=local)
    arguments = classify(lowered, traced.param_names, traced.states, 2)
    dense_convs = {traced.param_names[w]: family for w, family in lowered.dense_kernels.items()}
    built = build_step(lowered, arguments, len(traced.states), target, sgd, local=local)
    return CompiledStep(traced=traced, lowered=lowered, built=built, dense_convs=dense_convs)


@dataclass
class CompiledStep:
    """What `compile_step` made: the trace (reusable), the lowering's report, the built step."""

    traced: TracedStep
    lowered: Lowered
    built: BuiltStep
    dense_convs: dict[str, str]
