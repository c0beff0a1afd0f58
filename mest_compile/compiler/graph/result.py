"""What the rewrite pass returns: the new module, which kernel replaced which conv, and how to call it.

A rewritten `main` takes the user input, then the original parameters with each runtime-mode
sparse layer's weight replaced by its packed buffers (`<weight>_values`, ...). `arguments` builds
that list from the model's current tensors, packing each layer's *current* mask: a new mask is a
new argument list for the same executable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import tvm

from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.errors import MestError


@dataclass(frozen=True)
class Replacement:
    """One conv2d replaced by a `call_tir` of a scheme kernel.

    Attributes:
        layer: the PyTorch weight name (or the Relax parameter name in a plain graph).
        scheme: the scheme the kernel computes.
        geometry: the layer's static shape.
        conv: the Relax variable the conv2d was bound to in the traced graph.
        kernel: the name of the called PrimFunc (shared by layers of one geometry).
        mode: "runtime" (packed buffers are parameters) or "constant" (baked in).
        params: the new parameters' Relax names (runtime mode), in kernel order.
        mask_name: the PyTorch name of the layer's mask, when the model has one.
        traced_mask: the mask seen when tracing (used when no current mask is given).
    """

    layer: str
    scheme: str
    geometry: ConvGeometry
    conv: str
    kernel: str
    mode: str
    params: tuple[str, ...] = ()
    mask_name: str | None = None
    traced_mask: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Skipped:
    """A masked conv left as the dense conv2d, and why (with its scheme and geometry when known)."""

    layer: str
    conv: str
    reason: str
    scheme: str = ""
    geometry: ConvGeometry | None = None


@dataclass
class Rewritten:
    """The rewritten module and its calling convention.

    Attributes:
        module: the Relax module; `main(x, *params)`.
        target: the target the kernels were scheduled for.
        replaced: the replacements, in graph order.
        skipped: masked convs that stayed dense.
        sources: one entry per parameter of `main` after the input: `(torch_name,)` for an
            original tensor, or `(layer, index)` for buffer `index` of a runtime-mode layer.
    """

    module: tvm.IRModule
    target: tvm.target.Target
    replaced: list[Replacement]
    skipped: list[Skipped]
    sources: list[tuple[str, ...] | tuple[str, int]]

    def report(self) -> str:
        """Which call replaced which conv, one line each, then the skipped convs."""
        lines = [f"{r.conv}: conv2d({r.layer}) -> call_tir({r.kernel}) [{r.scheme}, {r.mode}]" for r in self.replaced]
        lines += [f"{s.conv}: conv2d({s.layer}) kept dense: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def arguments(self, tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
                  ) -> list[torch.Tensor]:
        """`main`'s arguments after the input, from PyTorch tensors by name.

        Args:
            tensors: parameters and buffers by PyTorch name (`trace.model_tensors(model)`).
            masks: a mask per layer (weight name) overriding the model's and the traced one.

        Raises:
            MestError: a tensor `main` needs is missing, or a mask is illegal for its scheme.
        """
        masks = dict(masks or {})
        by_layer = {r.layer: r for r in self.replaced}
        packed: dict[str, list[torch.Tensor]] = {}
        out = []
        for source in self.sources:
            if len(source) == 1:
                out.append(_tensor(tensors, source[0]).detach().contiguous())
                continue
            layer, index = source
            if layer not in packed:
                packed[layer] = _pack(by_layer[layer], tensors, masks.get(layer))
            out.append(packed[layer][int(index)])
        return out


def _tensor(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise MestError(f"the rewritten graph needs tensor {name!r}, which the model does not have")
    return tensors[name]


def _pack(r: Replacement, tensors: Mapping[str, torch.Tensor], mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The runtime buffers of one layer for its current weight and mask."""
    if mask is None:
        mask = tensors[r.mask_name] if r.mask_name is not None and r.mask_name in tensors else r.traced_mask
    if mask is None:
        raise MestError(f"no mask for layer {r.layer!r}: pass masks={{{r.layer!r}: mask}}")
    family = family_for(r.scheme)
    weight = _tensor(tensors, r.layer).detach()
    return [t.contiguous() for t in family.forward_buffers(family.forward_format(r.geometry, mask.bool()), weight)]
