"""The pass: every masked conv2d with a compiled scheme becomes a `call_tir` of its forward kernel.

Two modes (DESIGN.md decision 1):

* **runtime**: the layer's weight parameter becomes the kernel's runtime buffers (packed values
  and index buffers) as new parameters whose sizes (nonzeros, capacity) are symbolic, so a new
  mask, even with another number of nonzeros, runs on the same executable;
* **constant**: the packed buffers of the traced weight and mask are baked in (a frozen model).

A conv stays as it is, with the reason in the result, when its scheme has no compiled family or
no kernel for the target, or the kernels cannot take its geometry. Layers of one geometry share
one kernel.

Example:
    >>> out = rewrite(trace(model, x), target="host")                   # doctest: +SKIP
    >>> print(out.report())                                             # doctest: +SKIP
    lv2: conv2d(features.conv1.weight) -> call_tir(block_fwd_c3h32w32_o16k3s1p1) [..., runtime]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax, tirx

from mest_compile.compiler.families import KernelFamily, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.graph.match import MaskedConv, match_masked_conv
from mest_compile.compiler.graph.result import Replacement, Rewritten, Skipped
from mest_compile.compiler.graph.trace import Traced
from mest_compile.compiler.runtime.compiled import device_forward_func
from mest_compile.compiler.runtime.records import current_records
from mest_compile.compiler.target import Target, as_target
from mest_compile.compiler.target_families import TargetFamily
from mest_compile.errors import MestError

MODES = ("runtime", "constant")


def kernel_name(family: KernelFamily, geo: ConvGeometry, kind: TargetFamily, phase: str = "forward") -> str:
    """A readable, unique PrimFunc name per (scheme, phase, geometry, target family); CPU kernels carry no suffix."""
    shape = f"c{geo.in_channels}h{geo.in_h}w{geo.in_w}_o{geo.out_channels}k{geo.kernel_h}x{geo.kernel_w}s{geo.stride}p{geo.padding}"
    suffix = "" if kind.name == "cpu" else f"_{kind.name}"
    short = {"forward": "fwd"}.get(phase, phase)
    return f"{family.name}_{short}{suffix}_{shape}"


def _tensor_of(const: tvm.ir.GenericConst) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(const.value.numpy()))


@relax.expr_functor.mutator
class _SparseConvRewriter(relax.PyExprMutator):
    """Replaces matched masked convs; collects replacements, skips and new parameters."""

    def __init__(self, mod: tvm.IRModule, func: relax.Function, layers: Mapping[str, tuple[str, str]],
                 torch_name: Mapping[str, str], mask_names: Mapping[str, str], params: Mapping[str, torch.Tensor],
                 known_weights: set[str], target: Target, mode: str) -> None:
        super().__init__(mod)
        self.var2val = relax.analysis.get_var2val(func)
        self.conv_names = {b.value: b.var.name for blk in func.body.blocks for b in blk.bindings}
        self.param_names = {p.name for p in func.params}
        self.layers, self.torch_name, self.mask_names, self.params = layers, torch_name, mask_names, params
        self.known_weights, self.target, self.mode = known_weights, target, mode
        self.kernels: dict[tuple[str, ConvGeometry], tvm.ir.GlobalVar] = {}
        self.new_params: dict[str, list[relax.Var]] = {}
        self.geometries: dict[str, ConvGeometry] = {}
        self.replaced: list[Replacement] = []
        self.skipped: list[Skipped] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        conv_name = self.conv_names.get(call, "?")
        new = self.visit_expr_post_order(call)
        matched = match_masked_conv(call, self.var2val, self.known_weights, self.params)
        if matched is None:
            return new
        weight_name = matched.weight.name if isinstance(matched.weight, relax.Var) else "<constant>"
        layer, scheme = self.layers.get(weight_name, (weight_name, ""))
        try:
            return self._replace(new.args[0], matched, layer, scheme, conv_name, weight_name)
        except MestError as err:
            self.skipped.append(Skipped(layer=layer, conv=conv_name, reason=str(err), scheme=scheme,
                                        geometry=matched.geometry))
            return new

    def _replace(self, data: relax.Expr, m: MaskedConv, layer: str, scheme: str, conv: str, weight: str) -> relax.Expr:
        if not scheme:
            raise MestError("no scheme is known for this weight")
        if m.geometry is None:
            raise MestError(m.reason or "no geometry")
        family = family_for(scheme)
        geo = m.geometry
        reason = family.supports(geo)
        if reason is not None:
            raise MestError(f"scheme {family.scheme_name!r} cannot compile this layer: {reason}")
        gvar = self._kernel(family, geo)
        func = self.builder_.get()[gvar]
        is_param = isinstance(m.weight, relax.Var) and weight in self.param_names
        mode = self.mode if is_param else "constant"
        if mode == "runtime":
            buffers = self._runtime_params(weight, family, func, geo)
        else:
            buffers = [relax.const(t.numpy()) for t in self._packed(family, geo, m, weight)]
        mask = _tensor_of(m.mask) if isinstance(m.mask, tvm.ir.GenericConst) else None
        # A SparseConv2d's mask buffer was traced as a constant; at run time the model's own is read.
        mask_name = self.torch_name.get(m.mask.name) if isinstance(m.mask, relax.Var) else self.mask_names.get(layer)
        self.replaced.append(Replacement(
            layer=layer, scheme=family.scheme_name, geometry=geo, conv=conv, kernel=gvar.name_hint, mode=mode,
            params=tuple(v.name for v in buffers) if mode == "runtime" else (), mask_name=mask_name, traced_mask=mask,
        ))  # fmt: skip
        return relax.call_tir(gvar, [data, *buffers], _out_type(func, data))

    def _kernel(self, family: KernelFamily, geo: ConvGeometry) -> tvm.ir.GlobalVar:
        key = (family.scheme_name, geo)
        if key not in self.kernels:
            func = device_forward_func(family, geo, self.target, current_records())
            name = kernel_name(family, geo, self.target.family)
            self.kernels[key] = self.builder_.add_func(func.with_attr("global_symbol", name), name)
        return self.kernels[key]

    def _runtime_params(self, weight: str, family: KernelFamily, func: tirx.PrimFunc, geo: ConvGeometry
                        ) -> list[relax.Var]:
        """New parameters shaped like the kernel's buffers, one symbolic size per layer and name."""
        if weight in self.new_params:  # a weight shared by two convs packs once, if they agree
            if self.geometries[weight] != geo:
                raise MestError("the weight is shared with a conv of another shape")
            return self.new_params[weight]
        self.geometries[weight] = geo
        sizes: dict[str, tirx.Var] = {}
        new = []
        for name, buf in zip(family.forward_buffer_names, func.params[1:-1], strict=True):
            shape = [int(d) if isinstance(d, tirx.IntImm) else sizes.setdefault(d.name, tirx.Var(f"{weight}_{d.name}", "int64"))
                     for d in buf.shape]  # fmt: skip
            new.append(relax.Var(f"{weight}_{name}", relax.TensorType(shape, str(buf.dtype))))
        self.new_params[weight] = new
        return new

    def _packed(self, family: KernelFamily, geo: ConvGeometry, m: MaskedConv, weight: str) -> list[torch.Tensor]:
        """The buffers of the traced weight and mask (constant mode)."""
        if isinstance(m.weight, tvm.ir.GenericConst):
            w = _tensor_of(m.weight)
        elif weight in self.params:
            w = self.params[weight]
        else:
            raise MestError("the weight is computed in the graph, so it cannot be packed")
        if not isinstance(m.mask, tvm.ir.GenericConst) and not (isinstance(m.mask, relax.Var) and m.mask.name in self.params):
            raise MestError("the mask is computed in the graph, so it cannot be packed")
        mask = _tensor_of(m.mask) if isinstance(m.mask, tvm.ir.GenericConst) else self.params[m.mask.name]
        return family.forward_buffers(family.forward_format(geo, mask.bool()), w.float())


def _out_type(func: tirx.PrimFunc, data: relax.Expr) -> relax.TensorType:
    """The output type: the kernel's output buffer with its symbolic batch bound to the input's."""
    bound: dict[str, Any] = {}
    for dim, actual in zip(func.params[0].shape, data.ty.shape.values, strict=True):
        if isinstance(dim, tirx.Var):
            bound[dim.name] = actual
    out = func.params[-1]
    return relax.TensorType([bound[d.name] if isinstance(d, tirx.Var) else int(d) for d in out.shape], str(out.dtype))


def rewrite(traced: Traced | tvm.IRModule, target: Any = "host", *, mode: str = "runtime",
            schemes: Mapping[str, str] | str | None = None) -> Rewritten:
    """Replace the masked convs of `traced` by compiled scheme kernels.

    Args:
        traced: a `trace` result, or a Relax module whose `main(x, *params)` came from elsewhere.
        target: preset name, target dict or TVM target the kernels are scheduled for.
        mode: "runtime" (packed buffers as parameters) or "constant" (baked in).
        schemes: scheme per weight (PyTorch name, or Relax name for a plain module), or one
            scheme for every masked conv; a traced model's `SparseConv2d` layers need none.

    Raises:
        MestError: an unknown mode, target or scheme name.
    """
    if mode not in MODES:
        raise MestError(f"unknown rewrite mode {mode!r}; known: {', '.join(MODES)}")
    tgt = as_target(target)
    if isinstance(traced, tvm.IRModule):
        traced = Traced(module=traced, param_names={})
    func = traced.module["main"]
    n_in = int(func.attrs["num_input"]) if func.attrs is not None and "num_input" in func.attrs else 1
    torch_name = {p.name: traced.param_names.get(p.name, p.name) for p in func.params[n_in:]}
    layers = _layer_table(torch_name, traced.schemes, schemes)
    values = _param_values(func, n_in)
    mask_names = {name: name.removesuffix("weight") + "mask" for name in traced.schemes}
    # Weights the model or the caller names explicitly (one scheme for every conv names none).
    named = set(traced.schemes) | (set(schemes) if isinstance(schemes, Mapping) else set())
    known = {r for r, t in torch_name.items() if t in named or r in named}
    mutator = _SparseConvRewriter(traced.module, func, layers, torch_name, mask_names, values, known, tgt, mode)
    body = mutator.visit_expr(func.body)
    out, sources = _new_main(mutator, func, body, n_in, {r: layers[r][0] for r in layers}, torch_name)
    return Rewritten(module=out, target=tgt.tvm, replaced=mutator.replaced, skipped=mutator.skipped, sources=sources)


def _new_main(mutator: _SparseConvRewriter, func: relax.Function, body: relax.Expr, n_in: int,
              layer_of: Mapping[str, str], torch_name: Mapping[str, str]) -> tuple[tvm.IRModule, list[Any]]:
    """The module with `main` over the new parameters, and where each parameter's value comes from."""
    # Dead-code elimination first: the consumed `weight * mask` bindings still name the weight.
    candidates = list(func.params) + [v for vs in mutator.new_params.values() for v in vs]
    out = mutator.builder_.get()
    out["main"] = relax.Function(candidates, body, func.ret_ty, func.is_pure, attrs=func.attrs)
    out = relax.transform.DeadCodeElimination()(out)
    used = {v.name for v in relax.analysis.free_vars(out["main"].body)}
    params: list[relax.Var] = list(func.params[:n_in])
    sources: list[Any] = []
    for p in func.params[n_in:]:
        if p.name in mutator.new_params:
            params += mutator.new_params[p.name]
            sources += [(layer_of[p.name], i) for i in range(len(mutator.new_params[p.name]))]
        if p.name in used:  # a consumed weight or mask disappears; anything else still in use stays
            params.append(p)
            sources.append((torch_name[p.name],))
    main = relax.Function(params, out["main"].body, func.ret_ty, func.is_pure, attrs=func.attrs)
    out["main"] = main.without_attr("params") if "params" in (func.attrs or {}) else main  # stale values
    return out, sources

def _layer_table(torch_name: Mapping[str, str], traced: Mapping[str, str],
                 schemes: Mapping[str, str] | str | None) -> dict[str, tuple[str, str]]:
    """Relax weight name -> (layer name, scheme) for every weight with a known scheme."""
    table = {}
    for relax_name, name in torch_name.items():
        if isinstance(schemes, str):
            scheme = traced.get(name, schemes)
        else:
            scheme = (schemes or {}).get(name) or (schemes or {}).get(relax_name) or traced.get(name, "")
        if scheme:
            table[relax_name] = (name, scheme)
    return table


def _param_values(func: relax.Function, n_in: int) -> dict[str, torch.Tensor]:
    """The traced parameter values (the importer keeps them in `main`'s "params" attribute)."""
    if func.attrs is None or "params" not in func.attrs:
        return {}
    values = func.attrs["params"]
    return {p.name: torch.from_numpy(np.ascontiguousarray(v.numpy())) for p, v in zip(func.params[n_in:], values)}
