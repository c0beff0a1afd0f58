"""The training configuration: sections, flat names, YAML flat and nested, old checkpoint dicts."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from click.testing import CliRunner

import mest_compile.cli.train  # noqa: F401  (registers the command)
from mest_compile.cli import cli
from mest_compile.errors import MestError
from mest_compile.train.config import TrainConfig, setting_fields

ROOT = pathlib.Path(__file__).resolve().parents[2]

# What TrainConfig.to_dict() wrote before the sections: every setting at the top level.
OLD_FLAT = {
    "model": "resnet32", "dataset": "cifar10", "data_dir": None, "scheme": "block", "sparsity": 0.9, "profile": None,
    "ratio_space": "overall", "lower_bound": "0.92-0.91-0.9", "upper_bound": "0.9-0.9-0.9",
    "mask_update_decay_epoch": "90-120", "sp_mask_update_freq": 5, "sp_lmd": 0.0, "regrow_momentum": "reset",
    "compat": ["npresentations_from_epochs"], "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
    "lr_scheduler": "cosine", "epochs": 160, "batch_size": 64, "test_batch_size": 256, "seed": 914,
    "data_efficient": True, "remove_data_epoch": 70, "remove_n": 12000, "keep_lowest_n": 0, "sorting_file": None,
    "output_name": "mest", "compiled": False, "target": "host", "fallback": "measure", "work_dir": None, "tuning": "off", "threads": None,
}
# Settings added since, with their defaults (runs without them read as before).
ADDED = {"engine": "torch", "rpc": None, "rpc_key": None, "prebuilt": None,
         "freeze": None, "freeze_start_epoch": None, "freeze_interval": 4, "freeze_unit": "block", "freeze_depth": None,
         "data_sieving": None, "sieving_interval": 5, "partial_ratio": 0.75, "sieving_criterion": "forgetting",
         "agc": False, "agc_gamma": 0.1, "agc_ema": 0.3, "dist_backend": "auto", "dist_timeout": 120.0,
         "packed_grads": True, "sync_bn": False,
         "continual": None, "tasks": None, "cl_mask": False,
         "replay": None, "buffer_size": 500, "replay_alpha": 0.1, "replay_beta": 0.5,
         "sparcl": False, "tdm": False, "tdm_lambda": 0.5, "tdm_swap": 0.01, "tdm_every": 5, "tdm_until": 0.9,
         "ddr": False, "ddr_fraction": 0.3, "ddr_events": 4, "ddr_every": 5,
         "dgm": False, "dgm_keep": 0.8, "dgm_every": 30}


def test_sections_flat_names_and_replace() -> None:
    config = TrainConfig(scheme="block", epochs=3, lower_bound="0.9", upper_bound="0.85", mask_update_decay_epoch="2")
    assert config.sparse.scheme == config.scheme == "block"
    assert config.optim.epochs == config.epochs == 3
    assert config.mutation.upper_bound == config.upper_bound == "0.85"
    assert config.compile.compiled is False
    changed = dataclasses.replace(config, compiled=True, epochs=5)
    assert changed.compile.compiled and changed.epochs == 5 and changed.mutation == config.mutation
    assert config.epochs == 3  # frozen: replace made a new one
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data = config.data  # type: ignore[misc]
    with pytest.raises(MestError, match="'sparsty'"):
        TrainConfig(sparsty=0.9)
    with pytest.raises(AttributeError):
        config.nothing  # noqa: B018


def test_every_setting_has_help_and_a_unique_flat_name() -> None:
    settings = setting_fields()
    assert set(settings) == set(OLD_FLAT) | set(ADDED)  # every flag of before is still there
    assert all(spec.metadata["help"] for _, spec in settings.values())


def test_old_flat_and_new_nested_dicts_read_the_same() -> None:
    old = TrainConfig.from_dict(OLD_FLAT)
    assert old.data_efficiency.remove_n == 12000 and old.run.compat == ("npresentations_from_epochs",)
    nested = old.to_dict()
    assert set(nested) == {"data", "sparse", "optim", "run", "distributed", "flops", "continual_learning",
                           "rehearsal", "freezing", "mutation", "sparse_continual", "data_efficiency", "sieving",
                           "gradient_correction", "compile"}
    assert TrainConfig.from_dict(nested) == old
    flat_again = {key: value for section in nested.values() for key, value in section.items()}
    assert flat_again == {**OLD_FLAT, **ADDED}


def test_yaml_flat_nested_and_mixed(tmp_path: pathlib.Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text("scheme: block\nlower_bound: 0.9\nupper_bound: 0.85\nmask_update_decay_epoch: 20\nepochs: 7\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("sparse: {scheme: block}\nmutation:\n  lower-bound: 0.9\n  upper_bound: 0.85\n"
                      "  mask_update_decay_epoch: 20\noptim: {epochs: 7}\n")
    assert TrainConfig.load(flat, {}) == TrainConfig.load(nested, {})
    # Flags (flat) override nested YAML values; None means "not given".
    overridden = TrainConfig.load(nested, {"upper_bound": "0.8", "epochs": None})
    assert overridden.upper_bound == "0.8" and overridden.epochs == 7


@pytest.mark.parametrize(("text", "needle"), [
    ("mutation: {lowr_bound: 0.9}\n", "'mutation.lowr_bound'"),
    ("mutation: 0.9\n", "mutation is a section"),
    ("sp_lmd: 0.1\nmutation: {sp_lmd: 0.2}\n", "sp_lmd is given twice"),
    ("epochs: 0\n", "epochs must be a positive integer"),
    ("optim: {epochs: many}\n", "epochs has the wrong type"),
])
def test_bad_yaml(tmp_path: pathlib.Path, text: str, needle: str) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(MestError, match=needle):
        TrainConfig.load(file, {})


def test_shipped_recipes_load_unchanged() -> None:
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        config = TrainConfig.load(recipe, {})
        assert config.data.model in ("resnet32", "small_cnn", "small_cnn_wide")


def test_train_reads_a_nested_config(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: digits, model: small_cnn}\noptim: {epochs: 1, batch_size: 256}\n"
                      "sparse: {scheme: block}\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "scheme block  epochs 1  dataset digits  model small_cnn" in result.stdout
