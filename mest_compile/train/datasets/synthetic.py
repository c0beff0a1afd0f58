"""A generated dataset for tests: class-dependent coloured gratings plus noise, seeded.

Each class is a sinusoidal grating with its own orientation, frequency and colour; every
sample has a random phase (so a CNN with global pooling, not a pixel lookup, is what learns it)
and Gaussian noise. A three-conv network reaches high accuracy in a few hundred steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mest_compile.train.datasets.splits import DatasetSplits

NUM_CLASSES = 10
CHANNELS = 3
SIZE = 16
NUM_TRAIN = 1024
NUM_TEST = 256
# Noise std in pixel units: high enough that single pixels are unreliable, low enough to learn fast.
NOISE = 0.15


def _make(rng: np.random.Generator, n: int, freq: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    theta = np.pi * labels / NUM_CLASSES
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
    wave = np.cos(freq[labels][:, None, None] * proj + phase[:, None, None])
    images = 0.5 + 0.4 * colour[labels][:, :, None, None] * wave[:, None]
    images += NOISE * rng.standard_normal(images.shape)
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)


def load_synthetic(data_dir: str | Path | None, seed: int) -> DatasetSplits:
    """`NUM_TRAIN` + `NUM_TEST` images `(3, 16, 16)` in `NUM_CLASSES` balanced classes, fixed by `seed`."""
    del data_dir  # generated
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.6, 1.4, NUM_CLASSES)
    colour = rng.uniform(0.3, 1.0, (NUM_CLASSES, CHANNELS))
    train = _make(rng, NUM_TRAIN, freq, colour)
    test = _make(rng, NUM_TEST, freq, colour)
    # Flips would map orientation theta to pi - theta, i.e. onto another class: no augmentation.
    return DatasetSplits.from_unit_range("synthetic", train, test, num_classes=NUM_CLASSES, augment=False)
