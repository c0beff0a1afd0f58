"""Trace one training step of a model into Relax: `torch.export` in train mode, static batch.

What Relax's importer cannot do for training is done in PyTorch before the export:

* each `BatchNorm2d` becomes `_TrainBatchNorm`: batch statistics written with plain ops (each has a
  Relax gradient), the running statistics as inputs and their updates as outputs, as PyTorch
  updates them (momentum, unbiased variance). The importer bakes buffers into constants and hands
  back zeros for the updated running variance (TVM_TRAINING.md, B1 and B2);
* the loss is cross-entropy against a one-hot target, `-(log_softmax(z) * onehot).sum(1).mean()`:
  the importer's `F.cross_entropy` has no Relax gradient (B3).

The batch is static (Relax's gradient of reshape and mean fails on a symbolic batch, B4).
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tvm
from torch import nn

from mest_compile.compiler.step import batch_norm
from mest_compile.errors import MestError, first_line
from mest_compile.sparsity.module import sparse_layers

#: How the step's module is prefixed in the traced parameter names (`model.features.conv1.weight`).
_PREFIX = "model."


@dataclass
class TracedStep:
    """A training step imported into Relax.

    Attributes:
        module: `main(x, onehot, *params) -> (loss, logits, *new_states)`, one dataflow block.
        param_names: Relax parameter name -> the model's tensor name (parameter or buffer), for
            every parameter after the two inputs.
        states: the model's running-statistics buffers, in the order `main` returns their updates.
        batch_norms: the model's batch-norm module names (their `num_batches_tracked` counts steps).
        batch_shape: the traced input shape.
        num_classes: width of the one-hot target.
    """

    module: tvm.IRModule
    param_names: dict[str, str]
    states: tuple[str, ...]
    batch_norms: tuple[str, ...]
    batch_shape: tuple[int, ...]
    num_classes: int


class _TrainBatchNorm(nn.Module):
    """`BatchNorm2d` in train mode with its running statistics as inputs and their updates as outputs."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight, self.bias = bn.weight, bn.bias
        # Parameters (not buffers) so that the importer keeps them as function inputs; never trained.
        self.running_mean = nn.Parameter(bn.running_mean.detach().clone(), requires_grad=False)
        self.running_var = nn.Parameter(bn.running_var.detach().clone(), requires_grad=False)
        self.eps, self.momentum = bn.eps, float(bn.momentum)
        self.updates: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.numel() // x.shape[1]
        # Batch statistics only: the step's batch-norm kernels (`batch_norm.py`) compute this op.
        y, mean, rstd = torch.ops.aten._native_batch_norm_legit.no_stats(x, self.weight, self.bias, True,
                                                                          self.momentum, self.eps)
        var = 1.0 / (rstd * rstd) - self.eps
        m = self.momentum
        self.updates = ((1 - m) * self.running_mean + m * mean,
                        (1 - m) * self.running_var + m * var * (count / max(count - 1, 1)))
        return y


class _Step(nn.Module):
    """The model plus its loss: `(x, onehot) -> (loss, logits, *running-statistics updates)`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.norms: list[tuple[str, _TrainBatchNorm]] = []
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    full = f"{name}.{child_name}" if name else child_name
                    _check_batch_norm(full, child)
                    replacement = _TrainBatchNorm(child)
                    setattr(module, child_name, replacement)
                    self.norms.append((full, replacement))
        self.norms.sort(key=lambda item: item[0])

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(x)
        loss = -(F.log_softmax(logits, dim=1) * onehot).sum(dim=1).mean()
        updates = [u for _, bn in self.norms for u in (bn.updates or ())]
        return (loss, logits, *updates)


def _check_batch_norm(name: str, bn: nn.BatchNorm2d) -> None:
    if not bn.affine or not bn.track_running_stats or bn.momentum is None:
        raise MestError(f"batch norm {name!r}: the compiled step takes affine batch norms with running statistics "
                        "and a fixed momentum")


def trace_step(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int) -> TracedStep:
    """Export one training step of (a copy of) `model` for batches of `batch_shape`.

    Raises:
        MestError: torch.export or the Relax importer rejected the model (one line, the cause).
    """
    from tvm.relax.frontend.torch import from_exported_program

    # Backends are not copied: the step traces the masked dense conv, which the pass then replaces.
    layers = sparse_layers(model)
    backends = {name: layer.backend for name, layer in layers.items()}
    for layer in layers.values():
        layer.backend = None
    try:
        step = _Step(deepcopy(model)).train()
    finally:
        for name, layer in layers.items():
            layer.backend = backends[name]
    x = torch.zeros(batch_shape)
    onehot = torch.zeros(batch_shape[0], num_classes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            program = torch.export.export(step, (x, onehot))
    except Exception as err:  # noqa: BLE001  (torch.export raises many types; the user needs one line)
        raise MestError(f"torch.export could not trace the training step: {first_line(err)}") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = from_exported_program(program, keep_params_as_input=True,
                                           custom_convert_map={batch_norm.OP_NAME: batch_norm.convert})
    except Exception as err:  # noqa: BLE001
        raise MestError(f"Relax could not import the training step: {first_line(err)}") from err
    names = {relax: torch_name.removeprefix(_PREFIX)
             for relax, torch_name in program.graph_signature.inputs_to_parameters.items()}
    states = tuple(f"{name}.{stat}" for name, _ in step.norms for stat in ("running_mean", "running_var"))
    return TracedStep(module=module, param_names=names, states=states,
                      batch_norms=tuple(name for name, _ in step.norms), batch_shape=tuple(batch_shape),
                      num_classes=num_classes)
