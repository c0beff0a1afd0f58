"""Datasets: CIFAR read from tiny directories in the real pickle format, digits offline, synthetic."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mest_compile.errors import MestError
from mest_compile.train.datasets import DATASETS, DatasetSplits, load_dataset

PER_BATCH = 6  # images per CIFAR batch file: 5 train batches + 1 test batch


def write_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    """One batch file laid out like the official ones (bytes keys, uint8 rows of 3072)."""
    batch = {
        b"batch_label": b"testing batch",
        label_key: labels,
        b"data": images.reshape(len(labels), 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar(root: Path, hundred: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny CIFAR-10 or CIFAR-100 tree under `root`; return the train images and labels."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = (["train"], ["test"]) if hundred else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    key = b"fine_labels" if hundred else b"labels"
    train_images, train_labels = [], []
    for split, files in zip(("train", "test"), names):
        for name in files:
            count = PER_BATCH * (5 if hundred and split == "train" else 1)
            images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, classes, count).tolist()
            write_batch(folder / name, images, labels, key)
            if split == "train":
                train_images.append(images)
                train_labels += labels
    return np.concatenate(train_images), np.array(train_labels)


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_loads_from_directory_or_parent(tmp_path: Path, hundred: bool) -> None:
    images, labels = make_cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    folder = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    for where in (tmp_path, folder, str(folder)):
        data = load_dataset(name, data_dir=where)
        assert data.train_x.shape == (5 * PER_BATCH, 3, 32, 32) and data.train_x.dtype == torch.float32
        assert data.test_x.shape == (PER_BATCH, 3, 32, 32)
        assert data.train_y.dtype == torch.int64 and data.train_y.tolist() == labels.tolist()
        assert data.num_classes == (100 if hundred else 10) and data.in_channels == 3 and data.augment
    mean = (0.5071, 0.4865, 0.4409) if hundred else (0.4914, 0.4822, 0.4465)
    std = (0.2673, 0.2564, 0.2762) if hundred else (0.2023, 0.1994, 0.2010)
    assert data.mean == mean and data.std == std
    expected = (images[7, 2] / 255.0 - mean[2]) / std[2]
    assert np.allclose(data.train_x[7, 2].numpy(), expected, atol=1e-5)
    assert np.allclose(data.pad_fill.numpy(), -np.array(mean) / np.array(std), atol=1e-6)


def test_cifar_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(MestError, match="needs a data directory"):
        load_dataset("cifar10")
    missing = tmp_path / "nowhere"
    with pytest.raises(MestError, match=f"not found: {missing}"):
        load_dataset("cifar10", data_dir=missing)
    with pytest.raises(MestError, match=f"no cifar100 data in {tmp_path}"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar_missing_batch_file(tmp_path: Path) -> None:
    make_cifar(tmp_path, hundred=False)
    gone = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    gone.unlink()
    with pytest.raises(MestError, match=f"not found: {gone}"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", "corrupt pickle file"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "missing key 'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "uint8 \\(n, 3072\\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "labels of shape"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "label 10 outside"),
        (pickle.dumps([1, 2, 3]), "expected a dict"),
        (pickle.dumps(os.getcwd), "not allowed"),  # pickles that would call code are refused
    ],
    ids=["garbage", "no-labels", "bad-shape", "short-labels", "bad-label", "not-dict", "code"],
)
def test_cifar_corrupt_batch(tmp_path: Path, content: bytes, message: str) -> None:
    make_cifar(tmp_path, hundred=False)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(content)
    with pytest.raises(MestError, match=message) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(bad) in str(info.value)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0)


def test_digits_offline(digits: DatasetSplits) -> None:
    assert digits.train_x.shape == (1438, 1, 8, 8) and digits.test_x.shape == (359, 1, 8, 8)
    assert digits.num_classes == 10 and digits.in_channels == 1 and not digits.augment
    # Stratified: every class is held out in (nearly) the same proportion.
    share = digits.test_y.bincount() / (digits.test_y.bincount() + digits.train_y.bincount())
    assert torch.all((share - 0.2).abs() < 0.01)
    # Normalised with the training statistics of pixels scaled to [0, 1].
    assert abs(digits.train_x.mean().item()) < 1e-4 and digits.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert 0 < digits.mean[0] < 1


def test_digits_split_is_seeded(digits: DatasetSplits) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.test_x, digits.test_x)


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, b, c = (load_dataset("synthetic", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    counts = a.train_y.bincount(minlength=a.num_classes)
    assert counts.max() - counts.min() <= 1
    assert a.train_x.shape[1:] == (3, 16, 16) and not a.augment


def test_registry_and_arguments() -> None:
    assert set(DATASETS.names()) == {"cifar10", "cifar100", "digits", "synthetic"}
    with pytest.raises(MestError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(MestError, match="seed must be an int"):
        load_dataset("synthetic", seed="0")  # type: ignore[arg-type]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small convs run fastest single-threaded; intra-op threads only contend on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_synthetic_is_learnable_by_small_cnn(one_thread: None) -> None:
    from mest_compile.train.models import build_model

    data = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(60):
        batch = torch.arange(step * 64, step * 64 + 64) % len(data.train_y)
        loss = torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    assert accuracy > 0.7
