"""The compiled side of `mest-compile bench`, in its own process (see `mest_compile.baseline.worker`).

    python -m mest_compile.compiler.bench.worker '{"scheme": ..., "cases": [...], ...}'

Builds and checks every layer's kernels and the training step first, then serves timing rounds.
The step is the run's `--step-engine`: `tvm` (the whole step compiled by TVM, `train --engine tvm`)
or `torch` (PyTorch eager with the sparse convs on compiled kernels, `train --compiled`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from mest_compile.baseline.dense import Thunk, autograd_call, dense_step, layer_inputs_of, sparse_model, step_batch
from mest_compile.baseline.worker import serve, time_round
from mest_compile.compiler.api import compile_model
from mest_compile.compiler.bench.layers import check_layer
from mest_compile.compiler.bench.phases import phase_calls
from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.cache import kernels_for, quiet_torch_threads
from mest_compile.compiler.target import as_target
from mest_compile.compiler.tune.machine import use_tuning
from mest_compile.registry import Registry

#: The compiled training step a benchmark times, by `--step-engine`: spec -> one step.
STEP_ENGINES: Registry[Callable[[Mapping[str, Any], torch.Tensor, torch.Tensor], Thunk]] = Registry("step engine")


@STEP_ENGINES.register("tvm")
def _tvm_step(spec: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor) -> Thunk:
    from mest_compile.train.config import TrainConfig
    from mest_compile.train.loop import Trainer

    config = TrainConfig(dataset="synthetic", model=spec["model"], scheme=spec["scheme"], sparsity=spec["sparsity"],
                         batch_size=spec["batch"], epochs=1, seed=spec["seed"], engine="tvm", target=spec["target"],
                         work_dir=spec["work_dir"], tuning=spec["tuning"])
    trainer = Trainer(config, tempfile.mkdtemp(prefix="bench-step-"))
    trainer.data = dataclasses.replace(trainer.data, train_x=x, train_y=y, test_x=x, test_y=y)
    trainer.model.train()
    trainer.engine.begin_epoch(trainer)
    count = iter(range(1 << 62))
    trainer.engine.step(trainer, x, y, next(count), last=False)  # builds the step
    return lambda: trainer.engine.step(trainer, x, y, next(count), last=False)


@STEP_ENGINES.register("torch")
def _torch_step(spec: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor) -> Thunk:
    model = sparse_model(spec["model"], spec["scheme"], spec["sparsity"], spec["seed"])
    compile_model(model, spec["target"], example_input=x, fallback="never")
    return dense_step(model, x, y)


def compiled_side(spec: Mapping[str, Any]) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
    """The compiled side of `spec`: its round and its set-up facts (build seconds)."""
    use_tuning(spec["work_dir"], spec["tuning"])
    quiet_torch_threads()  # as compiled training does: PyTorch's workers must not spin beside the kernels
    target, family = as_target(spec["target"]), family_for(spec["scheme"])
    layers: dict[str, dict[str, Thunk]] = {}
    described: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for case in spec["cases"]:
        x, w, mask, dy = layer_inputs_of(case, spec["scheme"], spec["sparsity"], spec["batch"], spec["seed"])
        geometry = ConvGeometry(**{f.name: case[f.name] for f in dataclasses.fields(ConvGeometry)})
        kernels = kernels_for(family, geometry, target)
        fmt = kernels.pack(mask)
        check_layer(kernels, fmt, x, w, mask, dy)
        conv = lambda xi, wi, kernels=kernels, fmt=fmt: kernels.conv(xi, wi, fmt)  # noqa: E731
        layers[case["name"]] = phase_calls(x, w, dy, fmt, kernels) | {"autograd": autograd_call(conv, x, w, dy)}
        kept, out_pixels = int(mask.sum()), spec["batch"] * geometry.out_h * geometry.out_w
        # Training state of the layer (weight, gradient, SGD momentum): dense vs packed values + indices.
        described[case["name"]] = {
            "shape": list(w.shape), "input": list(x.shape), "stride": geometry.stride, "padding": geometry.padding,
            "units": fmt.nnz, "unit": family.unit, "density": round(float(mask.float().mean()), 4),
            "memory_dense_bytes": 3 * w.numel() * 4, "memory_packed_bytes": fmt.nbytes() + 2 * kept * 4,
            "flop_dense_fwd": 2 * out_pixels * w.numel(), "flop_sparse_fwd": 2 * out_pixels * kept}
    layers_s = time.perf_counter() - start
    step = STEP_ENGINES.get(spec["step_engine"])(spec, *step_batch(spec)) if spec["step"] else None
    facts = {"side": "compiled", "torch_threads": torch.get_num_threads(), "layers_build_s": round(layers_s, 1),
             "step_build_s": round(time.perf_counter() - start - layers_s, 1), "layers": described}
    return (lambda: time_round(layers, step, spec["reps"], spec["step_reps"])), facts


def main() -> None:
    """The compiled side's process."""
    run_round, facts = compiled_side(json.loads(sys.argv[1]))
    serve(run_round, facts)


if __name__ == "__main__":
    main()
