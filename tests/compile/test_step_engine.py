"""`--engine tvm`: the whole training step compiled by TVM follows PyTorch's masked dense training."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest
import torch

from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

pytestmark = pytest.mark.compile

SCHEMES = ["free_block_prune_column_4", "irregular", "pattern+filter_balance", "channel"]
# Elastic Mutation at every epoch start, so the second epoch trains on repacked buffers.
BASE = TrainConfig(
    dataset="digits", model="small_cnn", sparsity=0.75, epochs=2, batch_size=64, seed=3,
    lower_bound="0.8", upper_bound="0.75", mask_update_decay_epoch="5", sp_mask_update_freq=1,
)
# Per step, the kernels and Relax's ops sum in other orders than oneDNN (1e-7). Over an epoch at lr 0.1
# a ReLU or a magnitude threshold flipped by that rounding sends two runs apart (as with --compiled),
# so single steps are checked tightly from equal states and whole runs loosely.
STEP_ATOL = 1e-5
LOSS_RTOL = 1e-2
MASK_AGREEMENT = 0.99


def _trainers(config: TrainConfig, tmp_path: pathlib.Path) -> tuple[Trainer, Trainer]:
    return (Trainer(dataclasses.replace(config, engine="torch"), tmp_path / "torch"),
            Trainer(dataclasses.replace(config, engine="tvm"), tmp_path / "tvm"))


def _copy_state(source: Trainer, target: Trainer) -> None:
    """Model and optimizer state of `source` into `target` (the compiled step pushes from the model)."""
    target.model.load_state_dict(source.model.state_dict())
    target.optimizer.load_state_dict(source.optimizer.state_dict())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tvm_steps_follow_masked_dense(scheme: str, tmp_path: pathlib.Path) -> None:
    reference, compiled = _trainers(dataclasses.replace(BASE, scheme=scheme), tmp_path)
    for trainer in (reference, compiled):
        trainer.model.train()
    data = reference.data
    for step in range(4):
        index = torch.arange(step * 64, (step + 1) * 64)
        x, y = data.train_x[index], data.train_y[index]
        _copy_state(reference, compiled)
        compiled.engine.begin_epoch(compiled)
        loss, logits = compiled.engine.step(compiled, x, y, step, last=True)
        compiled.engine.end_epoch(compiled)
        ref_loss, ref_logits = reference.engine.step(reference, x, y, step, last=True)
        assert loss == pytest.approx(ref_loss, rel=1e-6), step
        assert torch.allclose(logits, ref_logits, atol=STEP_ATOL), step
        ref_params = dict(reference.model.named_parameters())
        for name, param in compiled.model.named_parameters():
            ref = ref_params[name]
            assert torch.allclose(param.grad, ref.grad, atol=STEP_ATOL), (step, name)
            assert torch.allclose(param, ref, atol=STEP_ATOL), (step, name)
            momentum = compiled.optimizer.state[param]["momentum_buffer"]
            assert torch.allclose(momentum, reference.optimizer.state[ref]["momentum_buffer"], atol=STEP_ATOL)
        buffers = dict(reference.model.named_buffers())
        for name, buffer in compiled.model.named_buffers():
            assert torch.allclose(buffer.float(), buffers[name].float(), atol=STEP_ATOL), (step, name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tvm_training_follows_masked_dense(scheme: str, tmp_path: pathlib.Path) -> None:
    reference, compiled = _trainers(dataclasses.replace(BASE, scheme=scheme), tmp_path)
    reference.fit()
    summary = compiled.fit()  # the second epoch starts with a mutation
    for ref, got in zip(reference.history, compiled.history, strict=True):
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=LOSS_RTOL)
        assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-3)
    assert compiled.history[0]["train_loss"] == pytest.approx(reference.history[0]["train_loss"], rel=1e-4)
    for name, layer in reference.layers.items():
        agreement = float((compiled.layers[name].mask == layer.mask).float().mean())
        assert agreement >= MASK_AGREEMENT, (name, agreement)
    engine = summary["engine"]
    assert {entry["status"] for entry in engine["layers"].values()} == {"compiled"}
    # One executable per batch size (full and the partial last batch); the mutation was absorbed.
    assert engine["builds"] == 2 and engine["rebuilds"] == 0
    assert engine["packs"] == len(compiled.layers)
    assert engine["repacks"] == len(compiled.layers)
    # The step holds the sparse layers packed (values, momentum, gradient, index buffers): at 75%
    # sparsity less than the dense weight, gradient and momentum they replace (irregular's three
    # index entries per weight and the capacity's headroom bring it to 0.65 of dense).
    state = engine["sparse_state_bytes"]
    assert 0 < state["packed"] < state["dense"], state


def test_sparse_layers_run_on_their_kernels(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(dataclasses.replace(BASE, scheme="irregular", epochs=1, engine="tvm"), tmp_path)
    trainer.fit()
    step = next(iter(trainer.engine._steps.values()))
    text = step.module.script()
    # No dense conv for the sparse layers' gradients: their dgrad and wgrad kernels are called.
    assert "conv2d_transpose" not in text
    for phase in ("fwd", "dgrad", "wgrad"):
        assert f"irregular_{phase}_" in text
    # The dense first conv runs on channel kernels with every filter kept: no Relax conv is left.
    assert "R.nn.conv2d(" not in text and "channel_wgrad_" in text
    assert trainer.summary()["engine"]["dense_convs_on_kernels"] == {"features.conv1.weight": "channel"}
    for name in trainer.layers:
        relax_name = "p_model_" + name.replace(".", "_")
        assert f"{relax_name}_values" in text and f"{relax_name}," not in text


def test_overflowing_mask_rebuilds_the_step(tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, scheme="free_block_prune_column_4", epochs=2, engine="tvm",
                                 lower_bound=None, upper_bound=None, mask_update_decay_epoch=None)
    trainer = Trainer(config, tmp_path)
    trainer.fit(stop_after=1)
    name, layer = next(iter(trainer.layers.items()))
    layer.set_mask_(torch.ones_like(layer.mask))  # more blocks than the capacity holds
    trainer.fit()
    engine = trainer.summary()["engine"]
    assert engine["overflows"] == 1 and engine["rebuilds"] == 1 and engine["builds"] == 4
    assert engine["layers"][name]["units"] == layer.mask.numel() // 4
    assert bool((layer.weight[~layer.mask] == 0).all())


def test_tvm_run_resumes(tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, scheme="free_block_prune_column_4", engine="tvm")
    Trainer(config, tmp_path).fit(stop_after=1)
    resumed = Trainer.resume(tmp_path)
    summary = resumed.fit()
    assert len(resumed.history) == 2 and summary["engine"]["name"] == "tvm"


@pytest.mark.parametrize(("settings", "message"), [
    ({"compiled": True}, "drop one of them"),
    ({"optimizer": "adam"}, "trains with SGD"),
    ({"target": "arm"}, "give --rpc HOST:PORT"),
    ({"target": "cuda"}, "runs the step on a CPU"),
    ({"rpc": "emulated"}, "is this machine's CPU"),
    ({"engine": "nope"}, "unknown step engine"),
])
def test_bad_combinations_are_refused(settings: dict, message: str, tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(BASE, **{"engine": "tvm", **settings})
    with pytest.raises(MestError, match=message):
        Trainer(config, tmp_path)


class _Branchy(torch.nn.Module):
    """Control flow on data: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x) if float(x.sum()) > 0 else -self.linear(x)


def _leaky() -> torch.nn.Module:
    """LeakyReLU has no Relax gradient in TVM 0.27."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.LeakyReLU(), torch.nn.Linear(16, 10))


@pytest.mark.parametrize(("model", "message"), [
    (_Branchy, "torch.export could not trace the training step"),
    (_leaky, "cannot be differentiated in Relax: .*leakyrelu"),
])
def test_untraceable_or_underivable_models_are_one_line(model: Any, message: str) -> None:
    from mest_compile.compiler.step.build import Sgd, compile_step
    from mest_compile.compiler.target import as_target

    with pytest.raises(MestError, match=message) as caught:
        compile_step(model(), {}, (4, 1, 8, 8), 10, as_target("host"), Sgd(0.9, 0.0))
    assert "\n" not in str(caught.value)


def test_cli_refuses_a_board_target_without_a_board(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    import mest_compile.cli.train  # noqa: F401  (registers the command)
    from mest_compile.cli import cli

    result = CliRunner().invoke(cli, ["train", "--engine", "tvm", "--target", "arm", "--epochs", "1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "give --rpc HOST:PORT" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
