"""A small CNN for fast tests and the demo: every conv is 3x3 with out-channels divisible by 4.

Those two properties make every sparsity scheme legal on every conv (pattern schemes need 3x3
kernels; block 4x1 needs filters in groups of 4), so a test can exercise any scheme in well
under a second. Global pooling lets the same network take 8x8 digits and 32x32 CIFAR images.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from mest_compile.errors import MestError
from mest_compile.train.models.init import mest_init_

# Three convs: enough depth for pattern and block structure to matter, few enough to train in
# seconds on a CPU. The middle conv halves the resolution (8x8 digits -> 4x4).
DEFAULT_WIDTHS = (16, 32, 32)
DEFAULT_STRIDES = (1, 2, 1)


class SmallCNN(nn.Module):
    """`conv3x3-BN-ReLU` blocks (`features.conv<i>`, `features.bn<i>`), mean pool, `linear`.

    Args:
        num_classes: width of the classifier.
        in_channels: input channels.
        widths: out-channels of each conv; each must be a positive multiple of 4.
        strides: stride of each conv, same length as `widths`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
    ) -> None:
        super().__init__()
        widths, strides = tuple(widths), tuple(strides)
        if not widths or any(not isinstance(w, int) or w <= 0 or w % 4 for w in widths):
            raise MestError(f"small_cnn widths must be positive multiples of 4, got {widths!r}")
        if len(strides) != len(widths) or any(not isinstance(s, int) or s < 1 for s in strides):
            raise MestError(f"small_cnn strides must be {len(widths)} positive ints, got {strides!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        planes = in_channels
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            layers[f"conv{i}"] = nn.Conv2d(planes, width, 3, stride=stride, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"relu{i}"] = nn.ReLU()
            planes = width
        self.features = nn.Sequential(layers)
        self.linear = nn.Linear(planes, num_classes)
        mest_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).mean(dim=(2, 3)))


def small_cnn(
    num_classes: int,
    in_channels: int,
    *,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> SmallCNN:
    """A `SmallCNN` (about 15k parameters with the default widths).

    Example:
        >>> model = small_cnn(num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    return SmallCNN(num_classes, in_channels, widths=widths, strides=strides)
