"""`mest-compile` for the data-parallel tests, with a model and a fault of their own.

`plain_cnn` is `small_cnn` without BatchNorm: BatchNorm normalises each rank's part of the batch
with its own statistics, so only a model without it trains exactly like one process on the whole
batch. `--skew-masks-on-rank R` flips one mask position on rank R at epoch 1, the disagreement the
ranks' mask check must catch. Launched as a script (`torchrun ... tests/unit/distributed_worker.py
train ...`, or plain python for the reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mest_compile.cli import main
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.models import MODELS
from mest_compile.train.models.small_cnn import small_cnn
from mest_compile.train.sections import setting

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


def plain_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """`small_cnn` with every BatchNorm replaced by the identity."""
    model = small_cnn(num_classes, in_channels)
    for name, module in list(model.features.named_children()):
        if isinstance(module, nn.BatchNorm2d):
            setattr(model.features, name, nn.Identity())
    return model


@dataclass(frozen=True)
class SkewConfig:
    """Which rank's masks go wrong (none by default)."""

    skew_masks_on_rank: int | None = setting(None, "flip one mask position on this rank at epoch 1 (tests)")


class SkewMasks(TrainingAlgorithm):
    """Flips the first mask position of the first sparse layer on one rank at epoch 1."""

    def __init__(self, config: SkewConfig) -> None:
        self.config = config

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any] | None:
        if epoch == 1 and int(os.environ.get("RANK", "0")) == self.config.skew_masks_on_rank:
            layer = next(iter(trainer.layers.values()))
            with torch.no_grad():
                layer.mask.view(-1)[0] = ~layer.mask.view(-1)[0]
        return None


if __name__ == "__main__":
    MODELS.add("plain_cnn", plain_cnn)
    ALGORITHMS.add("skew_masks", AlgorithmSpec(section="skew", config=SkewConfig, factory=SkewMasks,
                                               enabled=lambda c: c.skew_masks_on_rank is not None))
    main()
