"""The layers a benchmark times: every distinct sparse conv of a model, and the check before timing one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mest_compile.compiler.api import layer_inputs
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.runtime.gate import phase_errors
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model


@dataclass(frozen=True)
class LayerCase:
    """One distinct sparse conv of a model and how many of the model's layers share it."""

    name: str
    count: int
    geometry: ConvGeometry


def distinct_layers(model_name: str, scheme: str, batch: int, image: tuple[int, int, int],
                    num_classes: int = 10) -> list[LayerCase]:
    """The distinct sparse conv geometries of `model_name` (MEST's layer selection), in model order."""
    channels, height, width = image
    model = build_model(model_name, num_classes=num_classes, in_channels=channels)
    sparsify(model, scheme, uniform_profile(model, 0.5))
    layers = sparse_layers(model)
    shapes = {name: tuple(x.shape) for name, x in layer_inputs(model, torch.zeros(1, channels, height, width)).items()}
    cases: dict[ConvGeometry, list[str]] = {}
    for name, module in layers.items():
        geo = geometry_of(module, (batch, *shapes[name][1:]))
        cases.setdefault(geo, []).append(name)
    return [LayerCase(names[0].removesuffix(".weight"), len(names), geo) for geo, names in cases.items()]


def check_layer(kernels: Any, fmt: Any, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, dy: torch.Tensor) -> None:
    """The gate ran at a small batch; check the benchmarked batch too before timing anything."""
    for what, err in phase_errors(kernels, fmt, x, w, mask, dy).items():
        if not err <= 1e-4:
            raise MestError(f"{what} disagrees with PyTorch at batch {x.shape[0]} for {fmt.geometry}: "
                            f"relative error {err:.2e}")
