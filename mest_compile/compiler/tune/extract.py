"""The distinct sparse kernels of a model (or one layer): what `mest-compile tune` searches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mest_compile.compiler.api import layer_inputs
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.tune.workload import TuneKernel
from mest_compile.sparsity.module import sparse_layers


def model_kernels(model: nn.Module, example: torch.Tensor, scheme: str,
                  which: Iterable[str] = PHASES) -> list[TuneKernel]:
    """One kernel per (distinct layer geometry, phase), tuned at the first such layer's sparsity.

    The batch size is `example`'s; every layer sharing a geometry shares the compiled kernels
    (their nonzeros are runtime buffers), so it is tuned once and listed with all its layers.
    """
    layers = sparse_layers(model)
    inputs = layer_inputs(model, example)
    groups: dict[ConvGeometry, list[str]] = {}
    sparsity: dict[ConvGeometry, float] = {}
    for name, module in layers.items():
        if name not in inputs:
            continue
        geo = geometry_of(module, tuple(inputs[name].shape))
        groups.setdefault(geo, []).append(name.removesuffix(".weight"))
        sparsity.setdefault(geo, 1.0 - float(module.mask.float().mean()))
    batch = int(example.shape[0])
    return [TuneKernel(scheme, geo, w, batch, round(sparsity[geo], 4), tuple(names))
            for geo, names in groups.items() for w in which]
