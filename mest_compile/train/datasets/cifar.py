"""CIFAR-10 and CIFAR-100 from a user-given directory in the standard python-pickle format.

Nothing is downloaded: the user points at `cifar-10-batches-py` / `cifar-100-python` (or the
folder that holds it), as fetched from https://www.cs.toronto.edu/~kriz/cifar.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mest_compile.errors import MestError
from mest_compile.safe_pickle import load_pickle
from mest_compile.train.datasets.splits import DatasetSplits


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its batches, and how it is normalised."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    # MEST's constants (MEST_SPEC 5). The CIFAR-10 std is the widely copied (0.2023, 0.1994,
    # 0.2010), not the true per-channel std; kept because the published accuracies used it.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def find_root(layout: CifarLayout, data_dir: str | Path | None) -> Path:
    """The directory holding `layout`'s batch files: `data_dir` itself or `data_dir/<folder>`."""
    if data_dir is None:
        raise MestError(f"dataset {layout.name!r} needs a data directory holding {layout.folder}/ (nothing is downloaded)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise MestError(f"data directory not found: {path}")
    if (path / layout.folder).is_dir():
        return path / layout.folder
    if (path / layout.train_files[0]).exists() or path.name == layout.folder:
        return path
    raise MestError(f"no {layout.name} data in {path}: expected {layout.folder}/ or {layout.train_files[0]} there")


def read_batch(layout: CifarLayout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images `(n, 3, 32, 32)` uint8 and int64 labels from one batch file."""
    # latin1 decodes the Python 2 strings these files were written with into bytes-compatible
    # text; the keys come back as bytes (b'data') or str depending on the writer, so accept both.
    raw = load_pickle(path, encoding="latin1")
    if not isinstance(raw, dict):
        raise MestError(f"malformed CIFAR batch {path}: expected a dict, got {type(raw).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
    for key in ("data", layout.label_key):
        if key not in batch:
            raise MestError(f"malformed CIFAR batch {path}: missing key {key!r}")
    data = batch["data"]
    labels = np.asarray(batch[layout.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise MestError(f"malformed CIFAR batch {path}: 'data' must be uint8 (n, 3072), got {getattr(data, 'dtype', type(data).__name__)} {shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise MestError(f"malformed CIFAR batch {path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise MestError(f"malformed CIFAR batch {path}: label {int(labels.max())} outside [0, {layout.num_classes})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(layout: CifarLayout, data_dir: str | Path | None, seed: int) -> DatasetSplits:
    """Load `layout` from `data_dir` (the official split; `seed` is not used)."""
    del seed  # CIFAR ships a fixed train/test split
    root = find_root(layout, data_dir)
    splits = []
    for files in (layout.train_files, layout.test_files):
        parts = [read_batch(layout, root / name) for name in files]
        images = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        splits.append((images, np.concatenate([p[1] for p in parts])))
    return DatasetSplits.from_unit_range(
        layout.name, splits[0], splits[1],
        num_classes=layout.num_classes, mean=layout.mean, std=layout.std, augment=True,
    )
