"""`mest-compile` for the data-parallel tests, with one extra model: `small_cnn` without BatchNorm.

BatchNorm normalises each rank's part of the batch with its own statistics, so only a model
without it trains exactly like one process on the whole batch. Launched as a script
(`torchrun ... tests/unit/distributed_worker.py train ...`, or plain python for the reference).
"""

from __future__ import annotations

from torch import nn

from mest_compile.cli import main
from mest_compile.train.models import MODELS
from mest_compile.train.models.small_cnn import small_cnn


def plain_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """`small_cnn` with every BatchNorm replaced by the identity."""
    model = small_cnn(num_classes, in_channels)
    for name, module in list(model.features.named_children()):
        if isinstance(module, nn.BatchNorm2d):
            setattr(model.features, name, nn.Identity())
    return model


if __name__ == "__main__":
    MODELS.add("plain_cnn", plain_cnn)
    main()
