"""Rehearsal: reservoir sampling keeps every example alike, DER++'s loss, exact mid-task resume."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.train.config import TrainConfig
from mest_compile.train.continual.buffer import ReservoirBuffer
from mest_compile.train.continual.replay import derpp_loss
from mest_compile.train.loop import Trainer


def test_reservoir_fills_in_order_then_keeps_every_example_with_equal_chance() -> None:
    stream, capacity, trials = 40, 8, 1500
    kept = torch.zeros(stream)
    for seed in range(trials):
        buffer = ReservoirBuffer(capacity, seed)
        first = buffer.slots(capacity)
        assert first.tolist() == list(range(capacity))
        buffer.seen = capacity
        slots = torch.cat([first, buffer.slots(stream - capacity)])
        final = torch.full((capacity,), -1)
        for item, slot in enumerate(slots.tolist()):
            if slot >= 0:
                final[slot] = item
        kept[final] += 1
    # Each of the 40 examples is kept with probability 8/40 = 0.2 (std 0.01 over 1500 trials).
    assert ((kept / trials - capacity / stream).abs() < 0.05).all(), kept / trials


def test_add_and_draw_keep_examples_together() -> None:
    buffer = ReservoirBuffer(3, 0)
    x = torch.arange(10.0).view(10, 1, 1, 1)
    buffer.add_(x, torch.arange(10), torch.arange(10.0).view(10, 1).repeat(1, 2))
    draw = buffer.draw(3)
    assert len(buffer) == 3 and buffer.seen == 10
    assert torch.equal(draw["x"].view(-1), draw["y"].float()) and torch.equal(draw["logits"][:, 0], draw["y"].float())


def test_derpp_loss_equals_the_hand_formula() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    buffer = ReservoirBuffer(5, 1)
    buffer.add_(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 1]), torch.randn(5, 4))
    state = buffer.generator.get_state()
    loss = derpp_loss(model, buffer.draw, 2, 0.1, 0.5)
    buffer.generator.set_state(state)
    first, second = (torch.randperm(5, generator=buffer.generator)[:2] for _ in range(2))
    x, y, z = buffer.storage["x"], buffer.storage["y"], buffer.storage["logits"]
    mse = ((model(x[first]) - z[first]) ** 2).mean()
    out = model(x[second])
    ce = -(out.log_softmax(1)[torch.arange(2), y[second]]).mean()
    assert torch.allclose(loss, 0.1 * mse + 0.5 * ce)
    assert torch.allclose(ce, F.cross_entropy(out, y[second]))


def test_resume_in_the_middle_of_a_task_equals_the_uninterrupted_run(
        resumed_run: Callable[..., tuple[Trainer, Trainer]]) -> None:
    config = TrainConfig(dataset="digits", sparsity=0.9, epochs=4, batch_size=128, seed=5, continual="split-digits",
                         tasks=2, replay="derpp", buffer_size=60, sparcl=True, tdm_every=1, ddr_every=1,
                         ddr_events=1, dgm_every=2, lr_scheduler="constant", momentum=0.0, weight_decay=0.0)
    # Stopped after epoch 2: the run resumes at the second epoch of task 1.
    keys = ("train_loss", "test_loss", "n_train", "class_il_accuracy", "training_flops", "ddr_removed", "tdm_update")
    whole, resumed = resumed_run(config, 3, keys)
    for key, value in whole.algorithms["rehearsal"].buffer.storage.items():
        assert torch.equal(resumed.algorithms["rehearsal"].buffer.storage[key], value)
    assert whole.summary()["accuracy_matrix"] == resumed.summary()["accuracy_matrix"]
