"""SparCL's dynamic gradient masking (DGM): only each sparse layer's largest weight gradients apply.

At batches 0, `dgm_every`, 2 `dgm_every`, ... of every epoch the full (masked) weight gradient is
computed and, per sparse layer, the `dgm_keep` fraction of its masked-in entries with the largest
|g| becomes the gradient mask G (a subset of the weight mask M); in the other batches only G's
gradients are applied. G is set on each layer as `weight_grad_mask`, which the FLOPs counter
reads: between refreshes the weight gradient is needed only on G, so only that is counted, and
compiled kernels (host and GPU) pack G as their weight-gradient structure and compute just those (the units
G touches for structured schemes, when that leaves out enough of them to pay:
`compiler/runtime/grad_subset.py`). Input gradients
still use all of M. SparCL's `gradient_sparse` is a total sparsity (of the dense shape); here
the kept fraction is of the live gradients, which means the same thing at every weight sparsity.
With momentum or weight decay a weight outside G still moves: SparCL trains with neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.algorithms.sparcl import SECTION, SparCLConfig
from mest_compile.sparsity.module import SparseConv2d
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


def top_gradients(grad: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """The bool mask of the `round(keep * nnz(mask))` entries of `grad` inside `mask` with the largest |g|."""
    k = round(keep * int(mask.sum()))
    out = torch.zeros_like(mask, dtype=torch.bool)
    if k:
        score = torch.where(mask, grad.abs(), torch.full_like(grad, -1.0))
        out.view(-1)[torch.topk(score.view(-1), k).indices] = True
    return out


class DynamicGradientMasking(TrainingAlgorithm):
    """Per-layer top-|g| gradient masks, refreshed every `dgm_every` batches (module docstring)."""

    def __init__(self, config: SparCLConfig) -> None:
        self.config = config
        self.layers: dict[str, SparseConv2d] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.refresh = True

    def setup(self, trainer: Trainer) -> None:
        """The sparse layers (stem-to-head convs the scheme masks); other layers get full gradients."""
        self.layers = dict(trainer.layers)

    def _set(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        for name, layer in self.layers.items():
            layer.weight_grad_mask = masks.get(name)

    def before_step(self, trainer: Trainer, step: int, batch_index: torch.Tensor) -> None:
        """A refresh batch computes the whole masked gradient: no gradient mask for its passes."""
        self.refresh = self.refresh or step % self.config.dgm_every == 0
        if self.refresh:
            self._set({})

    @torch.no_grad()
    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """Refresh G from this gradient when due; keep only G's gradients."""
        if self.refresh:
            self._set({name: top_gradients(layer.weight.grad * layer.mask, layer.mask, self.config.dgm_keep)
                       for name, layer in self.layers.items() if layer.weight.grad is not None})
            self.refresh = False
        for name, layer in self.layers.items():
            if name in self.masks and layer.weight.grad is not None:
                layer.weight.grad.mul_(self.masks[name])

    def on_mask_update(self, trainer: Trainer, epoch: int, layers: tuple[str, ...]) -> None:
        """New weight masks: G must be chosen anew inside them."""
        self.refresh = True

    def state_dict(self) -> dict[str, Any]:
        """The gradient masks and whether the next batch refreshes them."""
        return {"masks": {name: mask.clone() for name, mask in self.masks.items()}, "refresh": self.refresh}

    def on_checkpoint_load(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """Restore them on the model's device."""
        self._set({name: torch.as_tensor(mask).to(self.layers[name].mask.device)
                   for name, mask in state["masks"].items()})
        self.refresh = bool(state["refresh"])


ALGORITHMS.add("dgm", AlgorithmSpec(
    section=SECTION, config=SparCLConfig, factory=DynamicGradientMasking, enabled=lambda c: c.uses("dgm"),
))
