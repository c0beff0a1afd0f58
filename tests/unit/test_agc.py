"""AGC: tau is AGENT's loss slope, the corrected gradient is the formula by hand, resume repeats, refusals."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mest_compile.algorithms.agc import TAU_INIT, loss_slope
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

CONFIG = dict(dataset="digits", model="small_cnn", scheme="irregular", sparsity=0.9, epochs=3, batch_size=256, seed=6,
              agc=True, agc_gamma=0.5, agc_ema=0.3)


def test_loss_slope_is_numpys_cov_over_var() -> None:
    a, b = [1.0, 2.5, 2.0, 4.0], [0.5, 1.0, 1.5, 3.0]
    assert loss_slope(a, b) == pytest.approx(np.cov(a, b, ddof=1)[0, 1] / np.var(b, ddof=1))
    assert loss_slope(a, a) == pytest.approx(1.0)
    assert loss_slope([1.0], [2.0]) == 1.0


def _grads(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_corrected_gradient_is_the_hand_computed_formula(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(TrainConfig(**CONFIG), tmp_path)
    trainer.fit(stop_after=1)  # the snapshot now lags the weights by one epoch
    agc = trainer.algorithms["agc"]
    data = trainer.data
    batches = [(data.train_x[i], data.train_y[i]) for i in trainer.active.split(trainer.config.batch_size)]
    snapshot_before = {k: v.clone() for k, v in agc.snapshot.state_dict().items() if isinstance(v, torch.Tensor)}
    buffers = {k: v.clone() for k, v in trainer.model.named_buffers()}
    trainer.model.train()  # the full pass runs in training mode (evaluation left it in eval mode)
    agc.snapshot.train()
    # By hand: mean gradient at w over the epoch's batches (batch norms trained as in the pass, then restored).
    mu = [g / len(batches) for g in _grads(trainer.model, batches)]
    with torch.no_grad():
        for name, buffer in trainer.model.named_buffers():
            buffer.copy_(buffers[name])
    losses_w = [float(F.cross_entropy(trainer.model(x), y).detach()) for x, y in batches]
    with torch.no_grad():
        for name, buffer in trainer.model.named_buffers():
            buffer.copy_(buffers[name])
    tau = (1 - 0.3) * agc.tau + 0.3 * loss_slope(losses_w, [float(F.cross_entropy(agc.snapshot(x), y).detach()) for x, y in batches])
    agc.snapshot.load_state_dict(snapshot_before, strict=False)

    record = agc.on_epoch_start(trainer, 1)
    assert record["agc_tau"] == pytest.approx(tau) and agc.tau != TAU_INIT
    for name, buffer in trainer.model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name  # the full pass trains no statistics
    index = trainer.active[:64]
    x, y = data.train_x[index], data.train_y[index]
    g = _grads(trainer.model, [(x, y)])
    g_snap = _grads(agc.snapshot, [(x, y)])
    agc.before_step(trainer, 0, index)
    agc.after_backward(trainer, 0, False)
    for p, gi, gs, m in zip(trainer.model.parameters(), g, g_snap, mu):
        assert torch.allclose(p.grad, gi + 0.5 * tau * (m - gs), atol=1e-6)


def test_resume_equals_uninterrupted(resumed_run: Callable[..., tuple[Trainer, Trainer]]) -> None:
    _ = resumed_run(TrainConfig(**CONFIG), 2, ("train_loss", "test_loss", "agc_tau", "training_flops"))


def test_agc_counts_its_extra_passes(tmp_path: pathlib.Path) -> None:
    plain = Trainer(TrainConfig(**{**CONFIG, "agc": False, "epochs": 1}), tmp_path / "plain").fit()
    corrected = Trainer(TrainConfig(**{**CONFIG, "epochs": 1}), tmp_path / "agc").fit()
    # Per epoch: the step loop twice (model and snapshot) plus the full pass (w: fwd+bwd, w~: fwd).
    flops = plain["training_flops"]
    forward = sum(c["forward"] for c in plain["training_flops_by_layer"].values())
    assert corrected["training_flops"] == 3 * flops + forward


def test_agc_refuses_the_tvm_engine(tmp_path: pathlib.Path) -> None:
    with pytest.raises(MestError, match="--engine torch"):
        Trainer(TrainConfig(**CONFIG, engine="tvm"), tmp_path)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--agc", "--agc-ema", "0"], "agc_ema"),
    (["--agc", "--agc-gamma", "-1"], "agc_gamma"),
])
def test_cli_refusals_are_one_line_exit_2(refused_train: Callable[[list[str], str], None], flags: list[str],
                                          needle: str) -> None:
    refused_train(flags, needle)


def test_with_frozen_layers_the_full_pass_keeps_them_frozen(tmp_path: pathlib.Path) -> None:
    config = TrainConfig(**{**CONFIG, "epochs": 2}, freeze="single-shot", freeze_start_epoch=1, freeze_depth=2)
    trainer = Trainer(config, tmp_path)
    trainer.fit(stop_after=1)
    frozen = {n: t.clone() for n, t in trainer.model.state_dict().items()
              if n.startswith(("features.conv1", "features.bn1", "features.conv2", "features.bn2"))
              and isinstance(t, torch.Tensor)}
    trainer.fit()
    for name, tensor in frozen.items():  # weights and batch-norm statistics, through the full pass too
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    snapshot = trainer.algorithms["agc"].snapshot
    assert not snapshot.features.bn1.training and not snapshot.features.conv2.weight.requires_grad
