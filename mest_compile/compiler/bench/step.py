"""Whole training step (forward, backward, optimizer, masks): masked dense vs compiled."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.api import compile_model
from mest_compile.compiler.bench.timing import interleaved
from mest_compile.compiler.target import Target
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model

#: Untimed steps of each model before the timed ones.
STEP_WARMUP = 8


def bench_step(model_name: str, scheme: str, sparsity: float, batch: int, image: tuple[int, int, int], reps: int,
               target: Target, generator: torch.Generator, num_classes: int = 10) -> dict[str, Any]:
    """Median step time of the same sparse model with masked dense convs and with compiled kernels.

    Every layer the compiler can take is compiled, slower or not ("never" fallback), so the number
    is the compiled kernels' own; training with the default fallback can only be faster.
    """
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    dense = build_model(model_name, num_classes=num_classes, in_channels=image[0])
    sparsify(dense, scheme, uniform_profile(dense, sparsity))
    compiled = copy.deepcopy(dense)
    x = torch.randn(batch, *image, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    report = compile_model(compiled, target, example_input=x, fallback="never")

    def stepper(model: nn.Module) -> Any:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        layers = list(sparse_layers(model).values())

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            for layer in layers:
                layer.apply_mask_()

        return step

    # Steady state, as training runs: the first ~8 steps of a fresh pair run slower on both sides
    # (measured: compiled 230-310 ms, then 214-222 ms from step ~9; dense 660-880, then ~645).
    timing = interleaved({"step": (stepper(dense.train()), stepper(compiled.train()))}, reps,
                         warmup=STEP_WARMUP)["step"]
    compiled_layers = sum(entry["status"] == "compiled" for entry in report.values())
    return {"model": model_name, "batch": batch, "dense_ms": timing["dense_ms"], "sparse_ms": timing["sparse_ms"],
            "speedup": timing["speedup"], "speedup_min": timing["speedup_min"],
            "layers_compiled": compiled_layers, "layers_sparse": len(report)}
