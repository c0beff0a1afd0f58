"""MEST's ResNet-32 for CIFAR: the wide GraSP variant (widths 32/64/128), not He et al.'s 16/32/64.

Module names follow the reference (`conv1`, `bn`, `layer1.0.conv1`, `layer2.0.downsample.0`,
`layer2.0.bn3`, `linear`) so MEST's per-layer YAML profiles and its checkpoints' state dicts
apply unchanged. Two deliberate differences in `forward`, neither changing the numbers: the
residual sum is out-of-place and the pooling is a mean over H and W, so `torch.export` traces
the model without in-place ops or shape-dependent kernel sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.train.models.init import mest_init_

# Stage widths of the GraSP ResNet that MEST's published numbers were measured with.
WIDTHS = (32, 64, 128)
STRIDES = (1, 2, 2)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU.

    The shortcut is the identity, or, when the shape changes, a strided 1x1 conv
    (`downsample.0`) followed by a batch norm kept outside it (`bn3`), as in the reference.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        self.bn3: nn.BatchNorm2d | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
            self.bn3 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None or self.bn3 is None else self.bn3(self.downsample(x))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A three-stage CIFAR ResNet: stem, `blocks_per_stage` BasicBlocks per stage, mean pool, linear.

    Args:
        num_classes: width of the classifier.
        in_channels: input channels (3 for CIFAR, 1 for the digits).
        blocks_per_stage: 5 gives ResNet-32 (6n+2 layers).
        widths: channels of the three stages.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        blocks_per_stage: int = 5,
        widths: tuple[int, int, int] = WIDTHS,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        planes = widths[0]
        stages = []
        for width, stride in zip(widths, STRIDES):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        mest_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


def resnet32(num_classes: int, in_channels: int) -> CifarResNet:
    """MEST's ResNet-32 (1,860,522 parameters for 10 classes and RGB input).

    Example:
        >>> model = resnet32(num_classes=10, in_channels=3)
        >>> tuple(model.layer2[0].downsample[0].weight.shape)
        (64, 32, 1, 1)
    """
    return CifarResNet(num_classes=num_classes, in_channels=in_channels, blocks_per_stage=5)
