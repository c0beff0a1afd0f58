"""Datasets by name, loaded into memory: `load_dataset("cifar10", data_dir="~/data")`.

A loader takes `(data_dir, seed)` and returns `DatasetSplits`. Nothing is ever downloaded:
CIFAR comes from a directory the user names, the digits from inside scikit-learn, `synthetic`
is generated.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.train.datasets.cifar import CIFAR10, CIFAR100, load_cifar
from mest_compile.train.datasets.digits import load_digits
from mest_compile.train.datasets.splits import DatasetSplits
from mest_compile.train.datasets.synthetic import load_synthetic

Loader = Callable[[str | Path | None, int], DatasetSplits]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.add("cifar10", partial(load_cifar, CIFAR10), aliases=("cifar-10",))
DATASETS.add("cifar100", partial(load_cifar, CIFAR100), aliases=("cifar-100",))
DATASETS.add("digits", load_digits)
DATASETS.add("synthetic", load_synthetic)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> DatasetSplits:
    """Load the dataset registered as `name` into memory.

    Args:
        name: a registered name (see `DATASETS.names()`).
        data_dir: for CIFAR, the `cifar-10-batches-py` / `cifar-100-python` directory or its
            parent; ignored by the others.
        seed: the train/test split of `digits` and the generation of `synthetic`; CIFAR has a
            fixed split and ignores it.

    Returns:
        Normalised train and test tensors with their metadata.

    Raises:
        MestError: unknown name, missing or malformed data (the message names the path).
    """
    loader = DATASETS.get(name)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MestError(f"dataset seed must be an int, got {seed!r}")
    return loader(data_dir, seed)


__all__ = ["DATASETS", "DatasetSplits", "load_dataset"]
