"""Training algorithms: one registered from outside the package hears every event in order and resumes."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from mest_compile.train import checkpoint
from mest_compile.train.config import TrainConfig
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.loop import Trainer
from mest_compile.train.sections import setting


@dataclass(frozen=True)
class ToyConfig:
    toy_events: bool = setting(False, "log the trainer's events (tests)")


class Toy(TrainingAlgorithm):
    """Logs every event; counts steps (its state)."""

    def __init__(self, config: ToyConfig) -> None:
        self.log: list[str] = []
        self.steps = 0

    def setup(self, trainer: Trainer) -> None:
        self.log.append("setup")

    def on_fit_start(self, trainer: Trainer) -> None:
        self.log.append("fit_start")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        self.log.append(f"epoch_start {epoch}")
        return {"toy_steps": self.steps}

    def before_step(self, trainer: Trainer, step: int, batch_index: torch.Tensor) -> None:
        self.log.append(f"before_step {step}")

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        assert all(p.grad is not None for p in trainer.model.parameters())
        self.log.append(f"after_backward {step}" + (" last" if last else ""))

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        assert logits.shape == (len(index), trainer.data.num_classes) and len(y) == len(index)
        self.steps += 1
        self.log.append(f"after_step {step}")

    def on_mask_update(self, trainer: Trainer, epoch: int, layers: tuple[str, ...]) -> None:
        assert layers == tuple(trainer.layers)
        self.log.append(f"mask_update {epoch}")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.log.append(f"epoch_end {record['epoch']}")

    def on_checkpoint_save(self, trainer: Trainer) -> dict[str, Any]:
        self.log.append("checkpoint_save")
        return super().on_checkpoint_save(trainer)

    def on_checkpoint_load(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        self.log.append("checkpoint_load")
        super().on_checkpoint_load(trainer, state)

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        self.log.append("fit_end")

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        return {"toy_steps": self.steps}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])


@pytest.fixture
def toy() -> Iterator[None]:
    ALGORITHMS.add("toy", AlgorithmSpec(section="toy", config=ToyConfig, factory=Toy, enabled=lambda c: c.toy_events,
                                        record_defaults={"toy_steps": None}, summary_defaults={"toy_steps": None}))
    try:
        yield
    finally:
        ALGORITHMS.remove("toy")


# Masks mutate at every epoch start (one stage past the end), so on_mask_update comes too.
CONFIG = dict(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=2, batch_size=512,
              lower_bound="0.9", upper_bound="0.9", mask_update_decay_epoch="5", sp_mask_update_freq=1)


def _epoch(epoch: int, steps: int) -> list[str]:
    # Toy is registered after Elastic Mutation, whose epoch start announces the new masks.
    events = [f"mask_update {epoch}", f"epoch_start {epoch}"]
    for step in range(steps):
        last = " last" if step == steps - 1 else ""
        events += [f"before_step {step}", f"after_backward {step}{last}", f"after_step {step}"]
    return [*events, f"epoch_end {epoch}", "checkpoint_save"]


def _toy(trainer: Trainer) -> Toy:
    algorithm = trainer.algorithms["toy"]
    assert isinstance(algorithm, Toy)
    return algorithm


def test_registered_algorithm_hears_the_events_in_order_and_resumes(toy: None, tmp_path: pathlib.Path) -> None:
    config = TrainConfig(**CONFIG, toy_events=True)
    assert config.toy == ToyConfig(toy_events=True)
    first = Trainer(config, tmp_path)
    steps = math.ceil(len(first.active) / config.batch_size)
    first.fit(stop_after=1)
    assert _toy(first).log == ["setup", "fit_start", *_epoch(0, steps), "fit_end"]
    saved = checkpoint.load_checkpoint(checkpoint.checkpoint_path(tmp_path))
    assert saved["algorithms"]["toy"] == {"steps": steps}
    assert saved["config"]["toy"] == {"toy_events": True}

    resumed = Trainer.resume(tmp_path)
    assert _toy(resumed).steps == steps  # the state came back from the checkpoint
    summary = resumed.fit()
    assert _toy(resumed).log == ["setup", "checkpoint_load", "fit_start", *_epoch(1, steps), "fit_end"]
    assert summary["toy_steps"] == 2 * steps
    assert [record["toy_steps"] for record in resumed.history] == [0, steps]


def test_a_disabled_algorithm_is_not_built_but_keeps_its_fields(toy: None, tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    assert "toy" not in trainer.algorithms
    assert list(trainer.algorithms) == ["training_flops", "elastic_mutation"]  # the FLOPs counter is always on
    assert trainer.summary()["toy_steps"] is None


def test_unregistered_algorithm_leaves_no_trace() -> None:
    assert "toy" not in ALGORITHMS
    assert "toy" not in TrainConfig().algorithms
