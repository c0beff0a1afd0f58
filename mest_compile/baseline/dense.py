"""PyTorch's dense conv phases and the masked-dense training step, as a dense training run calls them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model

Thunk = Callable[[], object]

#: PyTorch's dense conv phases `(x, weight, dy, stride, padding) -> result`, by kernel name.
DENSE_PHASES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int], torch.Tensor]] = {
    "forward": lambda x, w, dy, stride, padding: F.conv2d(x, w, stride=stride, padding=padding),
    "dgrad": lambda x, w, dy, stride, padding: conv2d_input(x.shape, w, dy, stride=stride, padding=padding),
    "wgrad": lambda x, w, dy, stride, padding: conv2d_weight(x, w.shape, dy, stride=stride, padding=padding),
}


def dense_phase(which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor | None, stride: int,
                padding: int) -> torch.Tensor:
    """PyTorch's dense phase `which` (forward, dgrad, wgrad) of `conv2d(x, weight)`; `dy` is unused by forward.

    Exactly one torch call, so the benchmarks time it as the dense baseline.
    """
    if which not in DENSE_PHASES:
        raise MestError(f"unknown conv phase {which!r}; known: {', '.join(DENSE_PHASES)}")
    return DENSE_PHASES[which](x, weight, dy, stride, padding)


def autograd_call(conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                  weight: torch.Tensor, dy: torch.Tensor) -> Thunk:
    """One forward and backward round trip of `conv(x, weight)`, as a training step runs the layer."""
    xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()

    def autograd() -> None:
        xg.grad = wg.grad = None
        conv(xg, wg).backward(dy)

    return autograd


def dense_layer_calls(x: torch.Tensor, masked_weight: torch.Tensor, dy: torch.Tensor, stride: int,
                      padding: int) -> dict[str, Thunk]:
    """{"fwd", "dgrad", "wgrad", "autograd"} -> a thunk running the dense layer's phase once.

    The phases are one torch call each on the pre-masked weight; "autograd" is one forward and
    backward round trip, as a dense training step runs the layer.
    """
    calls: dict[str, Thunk] = {short: (lambda which=which: dense_phase(which, x, masked_weight, dy, stride, padding))
                               for short, which in (("fwd", "forward"), ("dgrad", "dgrad"), ("wgrad", "wgrad"))}
    conv = lambda xi, wi: F.conv2d(xi, wi, stride=stride, padding=padding)  # noqa: E731
    return calls | {"autograd": autograd_call(conv, x, masked_weight, dy)}


def sparse_model(model_name: str, scheme: str, sparsity: float, seed: int, in_channels: int = 3,
                 num_classes: int = 10) -> nn.Module:
    """The benchmark's model: built and sparsified from `seed` alone, so every process gets the same one."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=num_classes, in_channels=in_channels)
    sparsify(model, scheme, uniform_profile(model, sparsity))
    return model


def dense_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Thunk:
    """One masked-dense SGD step of `model` (zero_grad, forward, loss, backward, step, masks re-applied)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    layers = list(sparse_layers(model).values())
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        for layer in layers:
            layer.apply_mask_()

    return step


def layer_inputs_of(case: dict[str, Any], scheme: str, sparsity: float, batch: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, weight, mask, dy) of one benchmark layer, drawn from `seed` alone (the same in every process)."""
    from mest_compile.sparsity.schemes import mask_for

    generator = torch.Generator().manual_seed(seed)
    g = case  # the geometry's fields
    x = torch.randn(batch, g["in_channels"], g["in_h"], g["in_w"], generator=generator)
    w = torch.randn(g["out_channels"], g["in_channels"], g["kernel_h"], g["kernel_w"], generator=generator)
    out_h = (g["in_h"] + 2 * g["padding"] - g["kernel_h"]) // g["stride"] + 1
    out_w = (g["in_w"] + 2 * g["padding"] - g["kernel_w"]) // g["stride"] + 1
    dy = torch.randn(batch, g["out_channels"], out_h, out_w, generator=generator)
    return x, w, mask_for(w, scheme, sparsity), dy


def step_batch(spec: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark step's batch `(x, y)`, drawn from the spec's seed alone (the same in every process)."""
    generator = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(spec["batch"], *spec["image"], generator=generator)
    return x, torch.randint(0, 10, (spec["batch"],), generator=generator)
