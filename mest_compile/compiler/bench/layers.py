"""Per-layer benchmark: forward, input gradient and weight gradient of every distinct sparse layer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mest_compile.compiler.api import layer_inputs
from mest_compile.compiler.bench.phases import phase_calls
from mest_compile.compiler.bench.timing import interleaved
from mest_compile.compiler.families import KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.gate import dense_phase, phase_errors
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.sparsity.schemes import mask_for
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


def bench_layer(family: KernelFamily, case: LayerCase, scheme: str, sparsity: float, batch: int, reps: int,
                target: Target, generator: torch.Generator) -> dict[str, Any]:
    """Time one layer's three phases, compiled vs dense, and check the compiled result first."""
    geo = case.geometry
    start = time.perf_counter()
    kernels = kernels_for(family, geo, target)
    build_s = time.perf_counter() - start
    x = torch.randn(batch, geo.in_channels, geo.in_h, geo.in_w, generator=generator)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=generator)
    mask = mask_for(w, scheme, sparsity)
    fmt = kernels.pack(mask)
    dy = torch.randn(batch, geo.out_channels, geo.out_h, geo.out_w, generator=generator)
    wm = w * mask
    conv: dict[str, Any] = {"stride": geo.stride, "padding": geo.padding}
    _check(kernels, fmt, x, w, mask, dy)

    xg, wg, wmg = x.clone().requires_grad_(), w.clone().requires_grad_(), wm.clone().requires_grad_()

    def dense_train() -> None:  # one autograd round trip, as a dense training step runs it
        xg.grad = wmg.grad = None
        F.conv2d(xg, wmg, **conv).backward(dy)

    def sparse_train() -> None:
        xg.grad = wg.grad = None
        kernels.conv(xg, wg, fmt).backward(dy)

    phases = phase_calls(x, w, dy, fmt, kernels)
    # The dense side is one torch call per phase on the pre-masked weight (no mask multiply timed).
    pairs = {
        "fwd": (lambda: dense_phase("forward", x, wm, None, **conv), phases["fwd"]),
        "dgrad": (lambda: dense_phase("dgrad", x, wm, dy, **conv), phases["dgrad"]),
        "wgrad": (lambda: dense_phase("wgrad", x, wm, dy, **conv), phases["wgrad"]),
        "autograd": (dense_train, sparse_train),
    }
    timing = interleaved(pairs, reps)
    row: dict[str, Any] = {
        "name": case.name, "count": case.count, "shape": list(w.shape), "input": list(x.shape),
        "stride": geo.stride, "padding": geo.padding, "units": fmt.nnz, "unit": family.unit,
        "density": round(float(mask.float().mean()), 4), "build_s": round(build_s, 3),
    }
    for key, t in timing.items():
        row.update({f"dense_{key}_ms": t["dense_ms"], f"sparse_{key}_ms": t["sparse_ms"],
                    f"speedup_{key}": t["speedup"], f"speedup_{key}_min": t["speedup_min"]})
    dense_total = sum(timing[k]["dense_ms"] for k in ("fwd", "dgrad", "wgrad"))
    sparse_total = sum(timing[k]["sparse_ms"] for k in ("fwd", "dgrad", "wgrad"))
    row.update(dense_total_ms=round(dense_total, 3), sparse_total_ms=round(sparse_total, 3),
               speedup_total=round(dense_total / sparse_total, 2))
    kept = int(mask.sum())
    # Training state of the layer (weight, gradient, SGD momentum): dense vs packed values + indices.
    row["memory_dense_bytes"] = 3 * w.numel() * 4
    row["memory_packed_bytes"] = fmt.nbytes() + 2 * kept * 4
    row["flop_dense_fwd"] = 2 * batch * geo.out_h * geo.out_w * w.numel()
    row["flop_sparse_fwd"] = 2 * batch * geo.out_h * geo.out_w * kept
    return row


def _check(kernels: Any, fmt: Any, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, dy: torch.Tensor) -> None:
    """The gate ran at a small batch; check the benchmarked batch too before timing anything."""
    for what, err in phase_errors(kernels, fmt, x, w, mask, dy).items():
        if not err <= 1e-4:
            raise MestError(f"{what} disagrees with PyTorch at batch {x.shape[0]} for {fmt.geometry}: "
                            f"relative error {err:.2e}")
