"""SpFDE's circular data sieving: constant partial set, the easiest leave, resume, MEST's removal, refusals."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import torch

from mest_compile.algorithms.data_sieving import CRITERIA
from mest_compile.sparsity.data_efficiency import ForgettingTracker
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

CONFIG = dict(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=4, batch_size=256, seed=4,
              data_sieving=0.25, sieving_interval=2, partial_ratio=0.5)


def test_criteria_order_easiest_first() -> None:
    tracker = ForgettingTracker(4)
    # Example 0 forgotten once; 1, 2, 3 never, with mean losses 0.3, 0.1, 0.2.
    tracker.record(torch.tensor([0, 1, 2, 3]), torch.tensor([True, True, True, True]),
                   torch.tensor([0.0, 0.3, 0.1, 0.2]))
    tracker.record(torch.tensor([0, 1, 2, 3]), torch.tensor([False, True, True, True]),
                   torch.tensor([0.0, 0.3, 0.1, 0.2]))
    candidates = torch.tensor([0, 1, 2, 3])
    assert CRITERIA.get("forgetting")(tracker, candidates).tolist() == [2, 3, 1, 0]
    assert CRITERIA.get("loss")(tracker, candidates).tolist() == [0, 2, 3, 1]


def test_partial_set_keeps_its_size_and_the_easiest_leave(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    sieving = trainer.algorithms["data_sieving"]
    n = len(trainer.data.train_y)
    trainer.fit(stop_after=2)
    before = sieving.partial.clone()
    expected = CRITERIA.get("forgetting")(sieving.tracker, torch.nonzero(before).squeeze(1))[: round(0.25 * round(0.5 * n))]
    trainer.fit(stop_after=1)  # epoch 2 sieves
    after = sieving.partial
    left = torch.nonzero(before & ~after).squeeze(1)
    assert sorted(left.tolist()) == sorted(expected.tolist())
    assert int((after & ~before).sum()) == left.numel() == trainer.history[2]["sieved"]
    assert {r["n_train"] for r in trainer.history} == {round(0.5 * n)}


def test_resume_equals_uninterrupted(resumed_run: Callable[..., tuple[Trainer, Trainer]]) -> None:
    whole, resumed = resumed_run(TrainConfig(**CONFIG), 3, ("train_loss", "test_loss", "n_train", "sieved"))
    assert torch.equal(resumed.algorithms["data_sieving"].partial, whole.algorithms["data_sieving"].partial)


def test_with_mest_removal_the_partial_set_refills(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG, data_efficient=True, remove_data_epoch=1, remove_n=200), tmp_path)
    trainer.fit(stop_after=2)
    n = len(trainer.data.train_y)
    assert [r["n_train"] for r in trainer.history] == [round(0.5 * n), round(0.5 * (n - 200))]
    removed = torch.ones(n, dtype=torch.bool)
    removed[trainer.algorithms["data_efficiency"].active] = False
    assert not (trainer.algorithms["data_sieving"].partial & removed).any()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--data-sieving", "0.2", "--partial-ratio", "1.0"], "partial_ratio"),
    (["--data-sieving", "0.2", "--partial-ratio", "0"], "partial_ratio"),
    (["--data-sieving", "1.5"], "data_sieving"),
    (["--data-sieving", "0.2", "--sieving-criterion", "margin"], "'margin'"),
])
def test_cli_refusals_are_one_line_exit_2(refused_train: Callable[[list[str], str], None], flags: list[str],
                                          needle: str) -> None:
    refused_train(flags, needle)
