"""Training FLOPs, counted as they are executed: an always-on training algorithm.

Every conv and linear layer gets a forward hook. A forward in training mode counts its forward
FLOPs at the layer's density (its mask's nonzeros); when autograd records that forward, the
backward that will run is counted with it: the weight gradient when the weight trains, the input
gradient when the input needs one (autograd skips it below the first trainable layer). Frozen
layers, sieved or removed data, rehearsal's buffer passes and AGC's extra passes (its snapshot is
a copy of the model and carries the same hooks) are therefore counted as they happen, and no
algorithm reports to the counter. A layer's `weight_grad_mask` (SparCL's gradient masking) narrows
its weight gradient. Evaluation runs in eval mode and is not counted. A step that runs no PyTorch
forward (`--engine tvm` compiles the whole step) is counted from the masks: what that step computes.

A multiply-add is 2 FLOPs. Batch norms, activations and the loss are not counted (elementwise,
a few percent of a conv). The dense-equivalent is plain dense training of the same model on the
whole training set for the same epochs: forward, weight gradient and input gradient of every
layer, except the input gradient of the first layer (its input is the data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mest_compile.algorithms.lost_ranks import collective
from mest_compile.sparsity.module import SparseConv2d
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

PASSES = ("forward", "input_grad", "weight_grad")


@dataclass(frozen=True)
class TrainingFlopsConfig:
    """The FLOPs counter has no settings: every run counts (an empty section)."""


def output_positions(module: nn.Module, output: torch.Tensor) -> int:
    """How many times each weight element is used in one forward: a conv's output positions are
    batch x height x width, a linear layer's every leading index of its output."""
    return output.numel() // (output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1])


def used_weights(module: nn.Module) -> int:
    """The weights a forward multiplies: the mask's nonzeros for a sparse layer."""
    return int(module.mask.sum()) if isinstance(module, SparseConv2d) else module.weight.numel()


def weight_grad_entries(module: nn.Module) -> int:
    """The weight-gradient entries a backward needs: those of the layer's `weight_grad_mask` when an
    algorithm set one (SparCL's gradient masking applies no others), else every used weight's."""
    grad_mask = getattr(module, "weight_grad_mask", None)
    return int(grad_mask.sum()) if grad_mask is not None else used_weights(module)


class TrainingFlops(TrainingAlgorithm):
    """Counts forward, input-gradient and weight-gradient FLOPs per layer (module docstring)."""

    def __init__(self, config: TrainingFlopsConfig) -> None:
        self.config = config
        self.by_layer: dict[str, dict[str, int]] = {}
        self.layers: dict[str, nn.Module] = {}
        # Output positions per example of each layer, in execution order (the first layer's input
        # is the data), from one probe example at setup.
        self.positions: dict[str, int] = {}
        self.dense_total = 0
        self._epoch_start_total = 0
        self._epoch_start: dict[str, dict[str, int]] = {}
        self._probing = False
        self._forwards = 0
        self._forwards_before_step = 0

    def setup(self, trainer: Trainer) -> None:
        """Hook every conv and linear layer; probe one example in eval mode (nothing counted or trained)."""
        for name, module in trainer.model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.by_layer.setdefault(name, dict.fromkeys(PASSES, 0))
                self.layers[name] = module
                module.register_forward_hook(self._hook(name))
        model, training = trainer.model, trainer.model.training
        self._probing = True
        try:
            model.eval()
            with torch.no_grad():
                model(trainer.data.train_x[:1])
        finally:
            self._probing = False
            model.train(training)

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        # A closure, not a bound method: a deep copy of the model (AGC's snapshot) keeps the
        # same function, so the copy's passes are counted here too.
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if self._probing:
                self.positions[name] = output_positions(module, output)
            # A trace (the TVM engine's torch.export of the step) executes nothing: not counted.
            elif module.training and not torch.compiler.is_compiling():
                self.observe(name, module, inputs[0], output)

        return hook

    def observe(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        """Count one training forward of layer `name` and the backward autograd will run for it."""
        flops = 2 * used_weights(module) * output_positions(module, output)
        counts = self.by_layer[name]
        counts["forward"] += flops
        if torch.is_grad_enabled():
            wgrad = 2 * weight_grad_entries(module) * output_positions(module, output)
            counts["weight_grad"] += wgrad if module.weight.requires_grad else 0
            counts["input_grad"] += flops if x.requires_grad else 0
        self._forwards += 1

    def before_step(self, trainer: Trainer, step: int, batch_index: torch.Tensor) -> None:
        """Mark the step's start: a step without an eager forward is counted from the masks."""
        self._forwards_before_step = self._forwards

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """A step that ran no PyTorch forward (`--engine tvm` runs the whole step compiled) is counted
        as what that step computes: forward, weight gradient and input gradient (not the first
        layer's) of every layer at its mask."""
        if self._forwards != self._forwards_before_step:
            return
        first = next(iter(self.positions), None)
        for name, positions in self.positions.items():
            flops = 2 * used_weights(self.layers[name]) * positions * len(index)
            counts = self.by_layer[name]
            counts["forward"] += flops
            counts["weight_grad"] += flops
            counts["input_grad"] += flops if name != first else 0

    def total(self) -> int:
        """FLOPs executed so far."""
        return sum(sum(counts.values()) for counts in self.by_layer.values())

    def dense_epoch(self, num_examples: int) -> int:
        """FLOPs of one plain dense epoch over `num_examples` examples."""
        per_example = [self.layers[name].weight.numel() * positions for name, positions in self.positions.items()]
        # Forward and weight gradient everywhere; no input gradient for the first layer.
        return 2 * num_examples * (3 * sum(per_example) - (per_example[0] if per_example else 0))

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Start the epoch's count (passes of other algorithms' epoch starts, AGC's, belong to it)."""
        self._epoch_start_total = self.total()
        self._epoch_start = {name: dict(counts) for name, counts in self.by_layer.items()}

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """The epoch's FLOPs and its dense-equivalent go into the record."""
        self._sum_over_ranks()
        dense = self.dense_epoch(len(trainer.data.train_y))
        self.dense_total += dense
        record["training_flops"] = self.total() - self._epoch_start_total
        record["dense_equivalent_flops"] = dense

    def _sum_over_ranks(self) -> None:
        """Data-parallel ranks each counted their part of every batch: the epoch's counts become the
        sum over ranks (identical on every rank, so rank 0's summary and checkpoint hold the run's)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        names = list(self.by_layer)
        epoch = torch.tensor([[self.by_layer[n][p] - self._epoch_start.get(n, {}).get(p, 0) for p in PASSES]
                              for n in names], dtype=torch.int64)
        collective("the FLOPs count's all-reduce", lambda: torch.distributed.all_reduce(epoch))
        for row, name in zip(epoch.tolist(), names):
            start = self._epoch_start.get(name, {})
            self.by_layer[name] = {p: start.get(p, 0) + value for p, value in zip(PASSES, row)}

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """Totals, their ratio, and each layer's forward, input- and weight-gradient FLOPs."""
        total = self.total()
        return {"training_flops": total, "dense_equivalent_flops": self.dense_total,
                "flops_fraction": total / self.dense_total if self.dense_total else None,
                "training_flops_by_layer": {name: dict(counts) for name, counts in self.by_layer.items()}}

    def state_dict(self) -> dict[str, Any]:
        """The counts so far (empty before anything ran, so a checkpoint from before the counter loads)."""
        if not self.total() and not self.dense_total:
            return {}
        return {"by_layer": {name: dict(counts) for name, counts in self.by_layer.items()},
                "dense_total": self.dense_total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue counting from a checkpoint's counts."""
        if not state:
            return
        for name, counts in state["by_layer"].items():
            self.by_layer[name] = {key: int(counts[key]) for key in PASSES}
        self.dense_total = int(state["dense_total"])


ALGORITHMS.add("training_flops", AlgorithmSpec(
    section="flops", config=TrainingFlopsConfig, factory=TrainingFlops,
    record_defaults={"training_flops": 0, "dense_equivalent_flops": 0},
    summary_defaults={"training_flops": 0, "dense_equivalent_flops": 0, "flops_fraction": None,
                      "training_flops_by_layer": {}},
))
