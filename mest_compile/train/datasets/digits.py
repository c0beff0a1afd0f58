"""The handwritten digits that ship inside scikit-learn: 1,797 8x8 grey images, fully offline.

The offline demo dataset: small enough to train a sparse network on in seconds, real enough
that accuracy means something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mest_compile.train.datasets.splits import DatasetSplits

# Share of each class held out for testing (an 80/20 stratified split).
TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test index arrays (each ascending) holding out `test_fraction` of every class."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: int(round(test_fraction * members.size))])
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(labels.size), test_idx), test_idx


def load_digits(data_dir: str | Path | None, seed: int) -> DatasetSplits:
    """Digits scaled to [0, 1] (raw values are 0..16), split by `seed`, normalised with train statistics."""
    del data_dir  # the data is inside scikit-learn
    from sklearn.datasets import load_digits as sklearn_digits  # only this loader needs sklearn

    bunch = sklearn_digits()
    images = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, seed)
    return DatasetSplits.from_unit_range(
        "digits",
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        num_classes=10,
        # 8x8 digits are centred and orientation matters (a flipped 2 is not a 2): no augmentation.
        augment=False,
    )
