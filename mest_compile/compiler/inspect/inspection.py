"""Trace, rewrite and compile a subject for a target, collecting everything `inspect` can show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import tvm

from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.inspect.codegen import Code, generate
from mest_compile.compiler.inspect.stats import LayerStats, layer_stats, signature_text
from mest_compile.compiler.inspect.subject import Subject
from mest_compile.compiler.graph.rewrite import kernel_name, rewrite
from mest_compile.compiler.graph.result import Skipped
from mest_compile.compiler.target import Target, as_target
from mest_compile.compiler.target_families import family_of
from mest_compile.compiler.graph.trace import model_tensors, trace
from mest_compile.errors import MestError


@dataclass
class KernelView:
    """One distinct kernel: its TIR, generated code, and the layers that call it.

    `note` says why a kernel is shown but not used (e.g. no GPU schedule: the layers stay dense).
    """

    name: str
    scheme: str
    geometry: ConvGeometry
    layers: list[str]
    tir: str
    source: Code
    asm: Code
    note: str | None = None


@dataclass
class Inspection:
    """Everything `mest-compile inspect` shows for one subject and target."""

    subject: str
    target_name: str
    target: tvm.target.Target
    before: str
    after: str
    rewrite_report: str
    kernels: list[KernelView] = field(default_factory=list)
    stats: list[LayerStats] = field(default_factory=list)


def inspect_subject(subject: Subject, target: Any = "host", mode: str = "runtime") -> Inspection:
    """Trace `subject`, rewrite it for `target`, and generate every kernel's code.

    Raises:
        MestError: unknown target, no masked conv in the graph, or no layer the scheme's kernels
            can take (the first reason).
    """
    tgt = as_target(target)
    traced = trace(subject.model, subject.example)
    rewritten = rewrite(traced, tgt, mode=mode)
    if not rewritten.replaced and not rewritten.skipped:
        raise MestError("no masked convolution in the traced graph: nothing to inspect")
    tensors = model_tensors(subject.model)
    batch = int(subject.example.shape[0])
    kernels: dict[str, KernelView] = {}
    stats: list[LayerStats] = []
    for r in rewritten.replaced:
        func = rewritten.module[r.kernel]
        view = kernels.get(r.kernel) or _view(r.kernel, r.scheme, r.geometry, func, tgt.tvm, None)
        kernels[r.kernel] = view
        view.layers.append(r.layer)
        mask = tensors[r.mask_name] if r.mask_name is not None and r.mask_name in tensors else r.traced_mask
        stats.append(_stats(r.layer, r.kernel, r.scheme, r.geometry, tensors, mask, batch, func))
    for s in rewritten.skipped:
        found = _unscheduled(s, tgt)
        if found is None or s.geometry is None:
            continue
        name, func = found
        view = kernels.get(name) or _view(name, s.scheme, s.geometry, func, tgt.tvm, f"{s.reason}: on this target the "
                                          "layer stays a dense conv2d; the CPU kernel's TIR is shown")  # fmt: skip
        kernels[name] = view
        view.layers.append(s.layer)
        mask = tensors.get(s.layer.removesuffix("weight") + "mask")
        stats.append(_stats(s.layer, name, s.scheme, s.geometry, tensors, mask, batch, func))
    if not kernels:
        raise MestError(f"no layer can use compiled kernels: {rewritten.skipped[0].reason}")
    return Inspection(
        subject=subject.name, target_name=str(target) if isinstance(target, str) else tgt.tvm.kind.name, target=tgt.tvm,
        before=traced.module["main"].script(), after=rewritten.module["main"].script(),
        rewrite_report=rewritten.report(), kernels=list(kernels.values()), stats=stats,
    )  # fmt: skip


def _view(name: str, scheme: str, geo: ConvGeometry, func: Any, tgt: tvm.target.Target, note: str | None) -> KernelView:
    if note is None:
        source, asm = generate(func, tgt)
    else:
        source, asm = Code("source", "txt", note=note), Code("assembly", "txt", note=note)
    return KernelView(name=name, scheme=scheme, geometry=geo, layers=[], tir=func.script(), source=source, asm=asm,
                      note=note)


def _unscheduled(s: Skipped, tgt: Target) -> tuple[str, Any] | None:
    """(name, CPU kernel) of a layer skipped only because its scheme has no forward kernel on `tgt`'s family."""
    if s.geometry is None or not s.scheme:
        return None
    cpu = family_of("cpu")
    try:
        family = family_for(s.scheme)
        if family.supports(s.geometry) is not None or tgt.family.unsupported(family, "forward") is None:
            return None
        func = cpu.forward_func(family, s.geometry)
    except MestError:
        return None
    return kernel_name(family, s.geometry, cpu), func


def _stats(layer: str, kernel: str, scheme: str, geo: ConvGeometry, tensors: dict[str, torch.Tensor],
           mask: torch.Tensor | None, batch: int, func: Any) -> LayerStats:
    weight = tensors[layer]
    mask = mask if mask is not None else weight != 0
    arguments = signature_text(func, family_for(scheme).forward_buffer_names)
    return layer_stats(layer, kernel, scheme, geo, weight, mask, batch, arguments)

