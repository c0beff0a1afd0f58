"""What every dataset loader returns: normalised in-memory train/test tensors and their metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mest_compile.errors import MestError


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset held in memory, already normalised.

    Images are stored normalised, `(pixel/255 - mean) / std`, so the test split and the training
    loop use them as they are. Augmentation pads with `pad_fill` (what a black pixel becomes
    after normalisation): that is what the reference's `Pad(4)` before `Normalize` produced.

    Attributes:
        name: the registered dataset name.
        train_x: float32 `(N, C, H, W)`.
        train_y: int64 `(N,)` labels in `[0, num_classes)`; position i is original index i.
        test_x: float32 `(M, C, H, W)`.
        test_y: int64 `(M,)`.
        num_classes: number of classes.
        mean: per-channel mean used to normalise (in [0, 1] pixel units).
        std: per-channel standard deviation used to normalise.
        augment: whether random crop + horizontal flip applies to training batches.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.float32 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise MestError(
                    f"dataset {self.name!r} {split} split must be float32 (N,C,H,W) images with "
                    f"int64 (N,) labels, got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise MestError(f"dataset {self.name!r} train/test image shapes differ: {tuple(self.train_x.shape[1:])} vs {tuple(self.test_x.shape[1:])}")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise MestError(f"dataset {self.name!r} needs one mean and std per channel, got {self.mean} and {self.std}")

    def to(self, device: torch.device | str) -> DatasetSplits:
        """These splits with their tensors on `device` (a GPU run keeps the whole set there)."""
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                                   test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    @property
    def in_channels(self) -> int:
        """Channels per image."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """`(H, W)` of every image."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def pad_fill(self) -> torch.Tensor:
        """Per-channel value of a zero pixel after normalisation, shape `(C,)`."""
        return -torch.tensor(self.mean) / torch.tensor(self.std)

    @classmethod
    def from_unit_range(
        cls,
        name: str,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        *,
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = False,
    ) -> DatasetSplits:
        """Normalise `(images, labels)` pairs with pixels in [0, 1] and wrap them.

        Args:
            name: dataset name.
            train: `(images (N,C,H,W) in [0, 1], labels (N,))`.
            test: same for the test split.
            num_classes: number of classes.
            mean: per-channel mean; computed from the training images when omitted.
            std: per-channel std; computed from the training images when omitted.
            augment: whether crop + flip augmentation applies.
        """
        train_x = torch.as_tensor(train[0], dtype=torch.float32)
        test_x = torch.as_tensor(test[0], dtype=torch.float32)
        if mean is None:
            mean = train_x.mean(dim=(0, 2, 3)).tolist()
        if std is None:
            std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(
            name=name,
            train_x=(train_x - m) / s,
            train_y=torch.as_tensor(np.asarray(train[1]), dtype=torch.int64),
            test_x=(test_x - m) / s,
            test_y=torch.as_tensor(np.asarray(test[1]), dtype=torch.int64),
            num_classes=num_classes,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            augment=augment,
        )
