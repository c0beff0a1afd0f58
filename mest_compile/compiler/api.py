"""The compiler's public entry points: `sparse_conv2d` and `compile_model` (alias `compile_`).

The boundary: targets become one `Target` here, and tuning records are the ones in effect
(`with TuningRecords(work_dir):`, or `records=`).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.families import KernelFamily, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.backend import CompiledConvBackend, geometry_of
from mest_compile.compiler.runtime.cache import kernels_for
from mest_compile.compiler.runtime.device_backends import device_backend, runs_on_device, shared_device_backend
from mest_compile.compiler.runtime.gate import KernelGateError
from mest_compile.compiler.runtime.pack_cache import PACKED
from mest_compile.compiler.runtime.policy import RecompilePolicy
from mest_compile.compiler.runtime.records import TunedChoices, using
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import SparseConv2d


def _single(value: int | tuple[int, ...], what: str) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise MestError(f"compiled sparse conv needs a symmetric {what}, got {value}")
    return int(values[0])


def sparse_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    scheme: str,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    target: Any = None,
) -> torch.Tensor:
    """Compiled `F.conv2d(x, weight * mask, stride=stride, padding=padding)`.

    `target` defaults to `"host"` for CPU tensors and `"cuda"` for CUDA tensors. A CUDA target runs
    TVM's CUDA kernels on the CUDA tensors themselves (no copies); an OpenCL target (`"mali"`,
    `"adreno"`) runs the GPU kernels on this machine's OpenCL device, from CPU tensors.

    Differentiable in `x` and `weight`; the weight gradient is zero outside `mask`. The layer's
    kernels are compiled and gated on first use (about a second) and cached for the process; if
    they fail the correctness gate a warning says so and the masked dense conv is used instead.
    Each distinct mask is packed once (`runtime/pack_cache.py`), so calling it every step with the
    same mask costs the kernels only.

    Example:
        >>> y = sparse_conv2d(x, w, mask, scheme="block", padding=1)  # doctest: +SKIP
    """
    family = family_for(scheme)
    tgt = as_target(target if target is not None else ("cuda" if x.device.type == "cuda" else "host"))
    want = tgt.tensor_device
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or {x.device.type, weight.device.type} != {want}:
        raise MestError(f"compiled sparse conv for target {tgt.key!r} takes float32 {want.upper()} tensors, got "
                        f"{x.dtype} on {x.device} and {weight.dtype} on {weight.device}")
    s, p = _single(stride, "stride"), _single(padding, "padding")
    geometry = ConvGeometry.of(tuple(x.shape), tuple(weight.shape), s, p)
    reason = family.supports(geometry)
    if reason is not None:
        raise MestError(f"scheme {scheme!r} cannot compile this layer: {reason}")
    try:
        if runs_on_device(tgt):
            backend = shared_device_backend(family, tgt)
            fmt = PACKED.get(backend.packer(geometry), mask)
            return backend.conv(x, fmt.values(weight), fmt)
        kernels = kernels_for(family, geometry, tgt)
    except KernelGateError as err:
        warnings.warn(f"{err}; using the masked dense conv", stacklevel=2)
        return F.conv2d(x, weight * mask, stride=s, padding=p)
    return kernels.conv(x, weight, PACKED.get(kernels, mask))


def unsupported(module: SparseConv2d, device: str = "cpu") -> str | None:
    """Why `module` (a `SparseConv2d`) cannot use compiled kernels whose tensors live on `device`
    ("cpu", or "cuda" for CUDA targets), or None if it can."""
    if module.groups != 1 or tuple(module.dilation) != (1, 1):
        return "grouped or dilated conv"
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return "padding mode other than explicit zeros"
    if len(set(module.stride)) != 1 or len(set(module.padding)) != 1 or module.stride[0] not in (1, 2):
        return "asymmetric stride or padding, or a stride other than 1 and 2"
    if module.weight.dtype != torch.float32 or module.weight.device.type != device:
        return f"not a float32 {device.upper()} weight"
    return None


def compile_model(
    model: nn.Module,
    target: Any = "host",
    *,
    example_input: torch.Tensor | None = None,
    policy: RecompilePolicy | None = None,
    fallback: str = "measure",
    records: TunedChoices | None = None,
) -> dict[str, dict[str, Any]]:
    """Switch every `SparseConv2d` of `model` to compiled kernels, in place.

    Args:
        target: a preset name, TVM tag, target dict, TVM target or `Target`.
        example_input: a batch for the model; with it each layer's kernels are built now, and
            with `fallback="measure"` every layer is timed against the dense conv.
        policy: the recompile thresholds.
        fallback: "measure": a layer whose compiled forward + backward measures slower than the
            dense conv on this machine keeps the masked dense conv ("never slower than dense");
            "never": compile whatever can be. GPU targets (OpenCL, CUDA) are not measured: their
            kernels are built and gated on the device at the layer's first call.
        records: tuning records to build with (default: those in effect).

    Returns:
        Layer name -> {"status": "compiled" | "dense", "reason": ..., "speedup": ..., "measured_with":
        the layer whose measurement it shares (layers of one geometry and density are timed once)}.
    """
    from mest_compile.sparsity.module import sparse_layers

    if fallback not in ("measure", "never"):
        raise MestError(f"fallback must be 'measure' or 'never', got {fallback!r}")
    if records is not None:
        with using(records):
            return compile_model(model, target, example_input=example_input, policy=policy, fallback=fallback)
    tgt = as_target(target)
    inputs = layer_inputs(model, example_input) if example_input is not None else {}
    report: dict[str, dict[str, Any]] = {}
    verdicts: dict[tuple[str, ConvGeometry, float], dict[str, Any]] = {}
    on_device = runs_on_device(tgt)
    for name, module in sparse_layers(model).items():
        module.backend = None
        reason = unsupported(module, tgt.tensor_device)
        family: KernelFamily | None = None
        if reason is None:
            try:
                family = family_for(module.scheme.name)
            except MestError as err:
                reason = str(err)
        entry: dict[str, Any] = {"scheme": module.scheme.name}
        geometry = geometry_of(module, tuple(inputs[name].shape)) if family is not None and name in inputs else None
        if geometry is not None:
            reason = family.supports(geometry)
        if reason is None and family is not None and on_device:
            module.backend = device = device_backend(family, tgt)
            if geometry is not None:  # build and gate now, on the device
                try:
                    device.ready(geometry)
                except KernelGateError as err:
                    reason, module.backend = str(err), None
        elif reason is None and family is not None:
            backend = CompiledConvBackend(family, tgt, policy)
            module.backend = backend
            if geometry is not None:
                # Layers of one geometry and density get one verdict: the first's measurement.
                key = (family.name, geometry, round(float(module.mask.float().mean()), 2))
                if key not in verdicts:
                    verdicts[key] = _measure(module, backend, inputs[name]) | {"measured_with": name}
                entry.update(verdicts[key])
                if "failure" in entry:
                    reason = entry.pop("failure")
                elif fallback == "measure" and entry["speedup"] < 1.0:
                    reason = f"compiled kernels measured {entry['speedup']:.2f}x of dense on this machine"
            if reason is not None:
                module.backend = None
        entry.update(status="dense" if reason else "compiled", reason=reason)
        report[name] = entry
    return report


def layer_inputs(model: nn.Module, example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each sparse layer's input for `example_input` (one forward pass in eval mode, no grad)."""
    from mest_compile.sparsity.module import sparse_layers

    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: SparseConv2d, args: tuple[torch.Tensor, ...]) -> None:
            seen.setdefault(name, args[0].detach())

        return record

    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in sparse_layers(model).items()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return seen


def _measure(module: SparseConv2d, backend: CompiledConvBackend, x: torch.Tensor, reps: int = 5,
             warmup: int = 3) -> dict[str, Any]:
    """Median forward + backward time of the compiled and the dense conv, interleaved; {"failure": ...}
    when the kernels fail their gate.

    `warmup` rounds are dropped: measured on ResNet-32, the first layers timed in a fresh process
    (thread pools starting, buffers first touched) read 1.9x where the same layers later read 3.4x.
    """
    try:
        kernels = backend.kernels(geometry_of(module, tuple(x.shape)))
    except KernelGateError as err:
        backend.failure = str(err)
        return {"failure": str(err)}
    weight, mask = module.weight.detach(), module.mask
    fmt = kernels.pack(mask)

    def compiled() -> None:
        w, xi = weight.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y = kernels.conv(xi, w, fmt)
        y.backward(torch.ones_like(y))

    def dense() -> None:
        w, xi = weight.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y = F.conv2d(xi, w * mask, stride=module.stride, padding=module.padding)
        y.backward(torch.ones_like(y))

    times: dict[str, list[float]] = {"compiled": [], "dense": []}
    runs: dict[str, Callable[[], None]] = {"compiled": compiled, "dense": dense}
    for _ in range(warmup + reps):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    dense_s, compiled_s = statistics.median(times["dense"][warmup:]), statistics.median(times["compiled"][warmup:])
    return {"dense_ms": 1e3 * dense_s, "compiled_ms": 1e3 * compiled_s, "speedup": dense_s / compiled_s,
            "tuned": list(getattr(kernels, "tuned", ()))}  # kernels scheduled from tuning records


#: `compile_model` with PyTorch's in-place spelling (it changes `model`'s layers in place).
compile_ = compile_model
