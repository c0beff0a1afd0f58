"""Mammoth's ResNet-18 for continual learning, the model of SparCL's experiments.

He et al.'s BasicBlock ResNet-18 ([2, 2, 2, 2] blocks, stage widths nf, 2nf, 4nf, 8nf) with a
3x3 stride-1 stem and no max-pool, as Mammoth builds it for 32x32 images, one linear head over
every class (class-incremental). SparCL trains nf = 64 (its `models/resnet18_cifar.py`);
Mammoth's reduced variant is nf = 20. Module names follow Mammoth's (`conv1`, `layer1.0.conv1`,
`layer2.0.shortcut.0`, `linear`), so SparCL's per-layer YAML names the same layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.train.models.init import mest_init_

BLOCKS = (2, 2, 2, 2)


class MammothBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or a strided 1x1 conv and BN), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MammothResNet18(nn.Module):
    """The stem, four stages of two blocks, mean pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages, planes = [], nf
        for i, blocks in enumerate(BLOCKS):
            width, stride = nf * 2**i, 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(MammothBlock(planes, width, stride if b == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(planes, num_classes)
        mest_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(out.mean(dim=(2, 3)))


def resnet18_mammoth(num_classes: int, in_channels: int, *, nf: int = 64) -> MammothResNet18:
    """Mammoth's ResNet-18 with stem width `nf` (64 as SparCL trains it, 20 for Mammoth's reduced one).

    Example:
        >>> resnet18_mammoth(num_classes=10, in_channels=3, nf=20)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return MammothResNet18(num_classes, in_channels, nf)
