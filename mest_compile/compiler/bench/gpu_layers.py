"""What the GPU benchmark times: a layer's phases and a training step, dense and compiled, on one device.

The dense side is PyTorch on the masked weight: `F.conv2d`, `conv2d_input` and `conv2d_weight`
(cuDNN on a CUDA device). The compiled side runs the layer's device kernels through its backend
(`CudaConvBackend` for the `cuda` target), with what training pays around each kernel: the gather
of the kept values, the output allocation and, for the weight gradient, the scatter into the
dense gradient, as in `phases.py` for host kernels.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mest_compile.baseline.dense import Thunk, autograd_call, dense_layer_calls, dense_step, layer_inputs_of, sparse_model
from mest_compile.compiler.api import compile_model
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.device_backend import device_backend
from mest_compile.compiler.runtime.gate import reference, relative_error
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError

_RTOL = 1e-4  # as the correctness gate: float32 sums, whatever order each side adds in

PairedCalls = dict[str, tuple[Thunk, Thunk]]


def geometry_of_case(case: Mapping[str, Any]) -> ConvGeometry:
    """The `ConvGeometry` of a benchmark case (a dict holding the geometry's fields)."""
    return ConvGeometry(**{f.name: case[f.name] for f in dataclasses.fields(ConvGeometry)})


def layer_pairs(case: Mapping[str, Any], scheme: str, sparsity: float, batch: int, seed: int,
                target: Target) -> tuple[PairedCalls, dict[str, Any]]:
    """{"fwd", "dgrad", "wgrad", "autograd"} -> (dense call, compiled call) of one layer, and its facts.

    The kernels are built and gated on the device first (`DeviceConvBackend.ready`), then checked
    again at the benchmark's batch against the masked dense conv on the CPU.
    """
    x, w, mask, dy = layer_inputs_of(dict(case), scheme, sparsity, batch, seed)
    geometry = geometry_of_case(case)
    backend = device_backend(family_for(scheme), target)
    device = backend.device_of()
    start = time.perf_counter()
    backend.ready(geometry)
    build_s = time.perf_counter() - start
    xd, wd, maskd, dyd = (t.to(device) for t in (x, w, mask, dy))
    fmt = backend.packer(geometry).pack(maskd)  # as training packs: the layer's mask where the layer lives
    _, saved = backend.forward(xd, fmt.values(wd).contiguous(), fmt)

    def forward() -> torch.Tensor:
        return backend.forward(xd, fmt.values(wd).contiguous(), fmt)[0]

    def dgrad() -> torch.Tensor:
        dx, _ = backend.backward(saved, dyd, fmt, True, False)
        assert dx is not None
        return dx

    def wgrad() -> torch.Tensor:
        _, dv = backend.backward(saved, dyd, fmt, False, True)
        assert dv is not None
        return fmt.dense_grad(dv, wd)

    conv = lambda xi, wi: backend.conv(xi, fmt.values(wi), fmt)  # noqa: E731
    compiled = {"fwd": forward, "dgrad": dgrad, "wgrad": wgrad, "autograd": autograd_call(conv, xd, wd, dyd)}
    errors = {}
    for key, which in (("fwd", "forward"), ("dgrad", "dgrad"), ("wgrad", "wgrad")):
        got = compiled[key]().detach().cpu()
        errors[key] = err = relative_error(got, reference(which, x, w, mask, dy, geometry.stride, geometry.padding))
        if not err <= _RTOL:
            raise MestError(f"{scheme} {which} kernel on {target.key} disagrees with masked dense at batch {batch} "
                            f"for {geometry}: relative error {err:.2e}")
    dense = dense_layer_calls(xd, wd * maskd, dyd, geometry.stride, geometry.padding)
    facts = {"shape": list(w.shape), "input": list(x.shape), "stride": geometry.stride, "padding": geometry.padding,
             "units": fmt.nnz, "density": round(float(mask.float().mean()), 4), "build_s": round(build_s, 2),
             "max_rel_error": {key: float(f"{err:.3g}") for key, err in errors.items()}}
    return {key: (dense[key], compiled[key]) for key in compiled}, facts


def step_pair(model_name: str, scheme: str, sparsity: float, x: torch.Tensor, y: torch.Tensor, seed: int,
              target: Target, device: torch.device) -> tuple[tuple[Thunk, Thunk], dict[str, Any]]:
    """One SGD step of the masked-dense model and of the same model after `compile_model(model, target)`.

    Both models are built from `seed` alone and live on `device`; the compiled one builds and gates
    every layer's kernels now (`example_input`), and must compile every sparse layer.
    """
    x, y = x.to(device), y.to(device)
    dense_model = sparse_model(model_name, scheme, sparsity, seed, in_channels=x.shape[1]).to(device)
    compiled_model = sparse_model(model_name, scheme, sparsity, seed, in_channels=x.shape[1]).to(device)
    start = time.perf_counter()
    report = compile_model(compiled_model, target, example_input=x, fallback="never")
    build_s = time.perf_counter() - start
    dense_layers = {name: entry["reason"] for name, entry in report.items() if entry["status"] != "compiled"}
    if dense_layers:
        name, reason = next(iter(dense_layers.items()))
        raise MestError(f"compile_model left {len(dense_layers)} of {len(report)} sparse layers dense on "
                        f"{target.key} ({name}: {reason})")
    with torch.no_grad():  # same weights, same batch: the first losses agree unless a kernel is wrong
        losses = [float(F.cross_entropy(m.eval()(x), y)) for m in (dense_model, compiled_model)]
    facts = {"layers_compiled": len(report), "build_s": round(build_s, 1),
             "first_loss": {"dense": round(losses[0], 6), "compiled": round(losses[1], 6)}}
    return (dense_step(dense_model, x, y), dense_step(compiled_model, x, y)), facts
