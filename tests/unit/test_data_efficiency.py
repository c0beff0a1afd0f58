"""Data efficiency: forgetting counts as MEST computes them (corrected), removal, the importance pkl."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mest_compile.errors import MestError
from mest_compile.sparsity.data_efficiency import (
    ForgettingTracker,
    example_statistics,
    read_importance,
    remaining,
    removal,
    write_importance,
)

# Batches of (original indices, correct) in training order. Histories per example:
#   0: 1 1 1 1    -> learned, never forgotten         -> 0
#   1: 0 1 0 1 0  -> forgotten at presentations 3, 5  -> 2 (the reference lists [3, 5])
#   2: 0 0 0      -> never learned                    -> 3 observed presentations (reference: npresentations)
#   3: 1 0 0 1    -> forgotten at presentation 2      -> 1
#   4: never presented                                -> -1, left out of the order
#   5: 0 1        -> learned late, never forgotten    -> 0
# First presentations come in the order 5, 0, 1, 2, 3: ties follow it, not the index.
TOY = [
    ([5, 0, 1, 2, 3], [0, 1, 0, 0, 1]),
    ([3, 2, 1, 0, 5], [0, 0, 1, 1, 1]),
    ([0, 1, 2, 3], [1, 0, 0, 0]),
    ([1, 3, 0], [1, 1, 1]),
    ([1], [0]),
]


def toy_tracker() -> ForgettingTracker:
    tracker = ForgettingTracker(num_examples=6)
    for indices, correct in TOY:
        n = len(indices)
        tracker.record(torch.tensor(indices), torch.tensor(correct, dtype=torch.bool), torch.ones(n), torch.full((n,), 0.5))
    return tracker


def test_toy_counts_default_observed_presentations() -> None:
    tracker = toy_tracker()
    assert tracker.presentations().tolist() == [4, 5, 3, 4, 0, 2]
    assert tracker.counts().tolist() == [0, 2, 3, 1, -1, 0]
    indices, counts, num_zero = tracker.sorted_by_forgetting()
    assert indices.tolist() == [5, 0, 3, 1, 2] and counts.tolist() == [0, 0, 1, 2, 3] and num_zero == 2
    assert indices.dtype == counts.dtype == torch.int64


def test_toy_counts_reference_npresentations() -> None:
    tracker = toy_tracker()
    # The reference passed --epochs (160): a never-learned example counts 160.
    assert tracker.counts(npresentations=160).tolist() == [0, 2, 160, 1, -1, 0]
    # And looked at the first `npresentations` presentations only: 1 0 1 0 1 -> "0 1" is no event.
    indices, counts, num_zero = tracker.sorted_by_forgetting(npresentations=2)
    assert indices.tolist() == [5, 0, 1, 3, 2] and counts.tolist() == [0, 0, 0, 1, 2] and num_zero == 3
    with pytest.raises(MestError, match="npresentations"):
        tracker.counts(npresentations=0)


def test_history_grows_past_initial_capacity() -> None:
    tracker = ForgettingTracker(2)
    for step in range(21):
        tracker.record(torch.tensor([0, 1]), torch.tensor([step % 2 == 0, True]))
    assert tracker.counts().tolist() == [10, 0]


def test_loss_and_margin_means() -> None:
    tracker = toy_tracker()
    assert tracker.mean_loss()[0].item() == 1.0 and tracker.mean_margin()[1].item() == 0.5
    assert torch.isnan(tracker.mean_loss()[4])


def test_state_dict_round_trip_and_resume() -> None:
    tracker = toy_tracker()
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    restored = ForgettingTracker(6)
    restored.load_state_dict(torch.load(buffer))
    for t in (tracker, restored):
        t.record(torch.tensor([4, 2]), torch.tensor([True, True]))
        t.record(torch.tensor([2, 4]), torch.tensor([False, True]))
    assert torch.equal(restored.counts(), tracker.counts())
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(restored.sorted_by_forgetting(), tracker.sorted_by_forgetting()))
    assert torch.equal(restored.mean_loss().nan_to_num(), tracker.mean_loss().nan_to_num())
    with pytest.raises(MestError, match="for 6 examples"):
        ForgettingTracker(7).load_state_dict(tracker.state_dict())
    with pytest.raises(MestError, match="keys"):
        restored.load_state_dict({"num_examples": 6})


def test_reset_forgets_everything() -> None:
    tracker = toy_tracker()
    tracker.reset()
    assert tracker.counts().tolist() == [-1] * 6
    indices, counts, num_zero = tracker.sorted_by_forgetting()
    assert indices.numel() == counts.numel() == num_zero == 0


@pytest.mark.parametrize(
    "indices, correct, message",
    [
        ([0, 6], [True, True], "index 6 outside"),
        ([1, 1], [True, False], "repeat"),
        ([0, 1], [True], "1 entries for 2"),
        ([0, 1], [0.5, 1.0], "bool or 0/1"),
        ([0.0, 1.0], [True, True], "integers"),
    ],
)
def test_record_rejects_bad_batches(indices: list, correct: list, message: str) -> None:
    with pytest.raises(MestError, match=message):
        ForgettingTracker(6).record(torch.tensor(indices), torch.tensor(correct))


def test_example_statistics() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.5]])
    targets = torch.tensor([0, 2, 1])
    correct, loss, margin = example_statistics(logits, targets)
    assert correct.tolist() == [True, False, False]  # a tie goes to the first class, as argmax does
    assert torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"))
    assert margin.tolist() == [1.0, -2.0, 0.0]


def test_removal_slices_the_order() -> None:
    order = torch.tensor([5, 0, 3, 1, 2])
    assert removal(order, keep_lowest_n=0, remove_n=2).tolist() == [5, 0]
    assert removal(order, keep_lowest_n=1, remove_n=3).tolist() == [0, 3, 1]
    assert removal(np.array([5, 0, 3]), 0, 0).numel() == 0
    assert order[-1:-1 + 2].numel() == 0  # the reference's --sorting-file slice removed nothing
    assert remaining(torch.arange(6), torch.tensor([5, 0])).tolist() == [1, 2, 3, 4]
    for keep, remove, message in ((0, 6, "exceeds the 5"), (-1, 1, "keep_lowest_n"), (0, True, "remove_n"), (0, 1.5, "remove_n")):
        with pytest.raises(MestError, match=message):
            removal(order, keep, remove)  # type: ignore[arg-type]


def test_importance_round_trip(tmp_path: Path) -> None:
    indices, counts, num_zero = toy_tracker().sorted_by_forgetting()
    path = write_importance(tmp_path / "pkl", indices, counts, name="irr_0.6_MwE.pkl")
    assert path == tmp_path / "pkl" / "irr_0.6_MwE_unforget_2.pkl"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind
    with path.open("rb") as f:  # what MEST's driver reads
        raw = pickle.load(f)
    assert set(raw) == {"indices", "forgetting counts"} and raw["indices"].dtype == np.int64
    assert raw["indices"].tolist() == [5, 0, 3, 1, 2] and raw["forgetting counts"].tolist() == [0, 0, 1, 2, 3]
    got = read_importance(path)
    assert torch.equal(got.indices, indices) and torch.equal(got.counts, counts) and got.num_zero == num_zero
    # Like --sorting-file, the name without ".pkl" is found too; an explicit .pkl path is used as is.
    assert read_importance(str(path)[:-4])[2] == 2
    explicit = write_importance(tmp_path / "order.pkl", indices.numpy(), counts.numpy())
    assert explicit == tmp_path / "order.pkl" and read_importance(explicit)[0].tolist() == indices.tolist()


def test_loaded_importance_removes_remove_n(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = np.sort(rng.integers(0, 5, 50))
    path = write_importance(tmp_path, rng.permutation(50), counts, name="run")
    order, _, _ = read_importance(path)
    removed = removal(order, keep_lowest_n=0, remove_n=12)
    kept = remaining(torch.arange(50), removed)
    assert removed.numel() == 12 and kept.numel() == 38 and not torch.isin(kept, removed).any()


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "order.pkl"
    write_importance(target, [1, 0], [0, 3])

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pickle, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        write_importance(target, [0, 1], [0, 0])
    assert read_importance(target)[1].tolist() == [0, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["order.pkl"]
    with pytest.raises(MestError, match="not sorted ascending"):
        write_importance(target, [0, 1], [3, 0])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage", "corrupt pickle"),
        (pickle.dumps([1, 2]), "holds a dict"),
        (pickle.dumps({"indices": np.arange(3)}), "expected keys"),
        (pickle.dumps({"indices": np.arange(2), "forgetting counts": np.zeros(2, np.int64), "x": 1}), "expected keys"),
        (pickle.dumps({"indices": np.arange(2.0), "forgetting counts": np.zeros(2, np.int64)}), "1-D integer"),
        (pickle.dumps({"indices": np.zeros((2, 2), np.int64), "forgetting counts": np.zeros(2, np.int64)}), "1-D integer"),
        (pickle.dumps({"indices": np.arange(3), "forgetting counts": np.zeros(2, np.int64)}), "3 indices but 2"),
        (pickle.dumps({"indices": np.array([1, 1]), "forgetting counts": np.zeros(2, np.int64)}), "1 duplicate"),
        (pickle.dumps({"indices": np.array([-1, 1]), "forgetting counts": np.zeros(2, np.int64)}), "negative example"),
        (pickle.dumps({"indices": np.arange(2), "forgetting counts": np.array([2, 1])}), "not sorted"),
    ],
    ids=["garbage", "list", "missing-key", "extra-key", "float", "2-d", "lengths", "duplicates", "negative", "unsorted"],
)
def test_bad_importance_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad_unforget_0.pkl"
    path.write_bytes(content)
    with pytest.raises(MestError, match=message) as info:
        read_importance(path)
    assert str(path) in str(info.value)
    with pytest.raises(MestError, match="not found"):
        read_importance(tmp_path / "absent.pkl")
