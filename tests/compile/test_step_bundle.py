"""`mest-compile export --train`: the bundle's numpy driver packs and mutates as the host does, and trains."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mest_compile.cli import cli, export  # noqa: F401  (registers the command)
from mest_compile.compiler.formats.block import BlockFormat, random_block_mask
from mest_compile.compiler.formats.channel import ChannelFormat, random_channel_mask
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.irregular import IrregularFormat, random_irregular_mask
from mest_compile.compiler.formats.pattern import PatternFormat, index_dtype, random_pattern_mask
from mest_compile.compiler.step.bundle import export_bundle, format_layout, load_trained
from mest_compile.compiler.step.driver.formats import PACKERS, FormatError
from mest_compile.compiler.step.driver.loop import train
from mest_compile.compiler.step.driver.schemes import SCHEMES, mutate
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.schemes import get_scheme
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer

pytestmark = pytest.mark.compile

GEOMETRIES = [ConvGeometry(16, 8, 8, 32, 3, 3, 1, 1), ConvGeometry(16, 9, 9, 32, 3, 3, 2, 1),
              ConvGeometry(8, 8, 8, 16, 1, 1, 2, 0)]


def _host_formats(geo: ConvGeometry, generator: torch.Generator) -> list[tuple[str, torch.Tensor, object]]:
    """(kind, mask, host format) for every kind and tile layout that `geo` admits."""
    shape = (geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w)
    out: list[tuple[str, torch.Tensor, object]] = []
    mask = random_irregular_mask(shape, 0.3, generator)
    out += [("irregular", mask, IrregularFormat.pack(mask, geo, capacity=int(mask.sum()) + 7, chunk_filters=c,
                                                     channel_block=b)) for c, b in ((0, 0), (8, 4), (5, 3))]
    mask = random_block_mask(shape[0], shape[1:], 0.4, generator)
    out += [("block", mask, BlockFormat.pack(mask, geo, capacity=int(mask.sum()) // 4 + 3, chunk_groups=2))]
    if geo.stride == 1:
        out += [("block", mask, BlockFormat.pack(mask, geo, capacity=int(mask.sum()) // 4 + 3, scatter_channels=4))]
    if geo.kernel_h == 3:
        mask = random_pattern_mask(shape, 0.4, generator)
        out += [("pattern", mask, PatternFormat.pack(mask, geo, capacity=200))]
    mask = random_channel_mask(shape, 0.4, generator)
    out += [("channel", mask, ChannelFormat.pack(mask, geo, capacity=int(mask[:, 0, 0, 0].sum()) + 2))]
    return out


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g.kernel_h}x{g.kernel_w}s{g.stride}")
def test_numpy_packers_write_the_host_formats_buffers(geo: ConvGeometry) -> None:
    generator = torch.Generator().manual_seed(0)
    for kind, mask, fmt in _host_formats(geo, generator):
        packed = PACKERS[kind](mask.numpy(), format_layout(fmt), fmt.capacity)
        assert packed.nnz == fmt.nnz, kind
        for field, buffer in fmt.buffers().items():
            np.testing.assert_array_equal(packed.buffers[field], buffer.numpy(), err_msg=f"{kind} {field}")
            assert packed.buffers[field].dtype == buffer.numpy().dtype, (kind, field)
        weight = torch.randn(mask.shape, generator=generator) * mask
        values = fmt.values(weight).reshape(fmt.nnz, -1).numpy()
        gathered = weight.numpy().reshape(-1)[packed.flat_idx[: packed.nnz]].reshape(fmt.nnz, -1)
        np.testing.assert_array_equal(gathered, values, err_msg=kind)


@pytest.mark.parametrize("shape", [(32, 16), (256, 256)], ids=["int16", "int32"])
def test_numpy_pattern_packer_narrows_the_indices_as_the_host(shape: tuple[int, int]) -> None:
    geo = ConvGeometry(shape[1], 4, 4, shape[0], 3, 3, 1, 1)
    mask = random_pattern_mask((*shape, 3, 3), 0.6, torch.Generator().manual_seed(4))
    fmt = PatternFormat.pack(mask, geo)
    packed = PACKERS["pattern"](mask.numpy(), format_layout(fmt), fmt.capacity)
    for field, buffer in fmt.buffers().items():
        assert packed.buffers[field].dtype == np.dtype(index_dtype(geo)), field
        np.testing.assert_array_equal(packed.buffers[field], buffer.numpy(), err_msg=field)


def test_numpy_packers_refuse_illegal_masks() -> None:
    geo = GEOMETRIES[0]
    generator = torch.Generator().manual_seed(1)
    half_block = random_block_mask(32, (16, 3, 3), 0.4, generator).numpy()
    half_block[1, 0, 0, 0] = not half_block[1, 0, 0, 0]
    fmt = BlockFormat.pack(torch.ones(32, 16, 3, 3, dtype=torch.bool), geo)
    with pytest.raises(FormatError, match="blocks of 4"):
        PACKERS["block"](half_block, format_layout(fmt), fmt.capacity)
    with pytest.raises(FormatError, match="more than the layer's capacity"):
        PACKERS["irregular"](np.ones((32, 16, 3, 3), bool), format_layout(fmt), 10)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_numpy_mutation_prunes_as_the_host_and_grows_to_the_bound(scheme: str) -> None:
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(32, 16, 3, 3, generator=generator)
    host = get_scheme(scheme)
    survivors, mask = mutate(weight.numpy(), scheme, 0.92, 0.9, np.random.default_rng(0))
    np.testing.assert_array_equal(survivors, host.prune(weight, 0.92).numpy())
    host_mask = host.grow(weight * torch.from_numpy(survivors), torch.from_numpy(survivors), 0.9, generator)
    assert int(mask.sum()) == int(host_mask.sum())
    assert (mask >= survivors).all()
    assert host.is_legal(torch.from_numpy(mask))


CONFIG = TrainConfig(dataset="digits", model="small_cnn", scheme="free_block_prune_column_4", sparsity=0.75,
                     epochs=3, batch_size=64, seed=3, lower_bound="0.8", upper_bound="0.75",
                     mask_update_decay_epoch="5", sp_mask_update_freq=1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("bundle")
    return export_bundle(Trainer(CONFIG, root / "run"), as_target("host"), root / "bundle")


def test_bundle_trains_mutates_and_reads_back(bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    plan = json.loads((bundle / "bundle.json").read_text())
    assert plan["mutation"] == [[0.8, 0.75]] * 3
    assert plan["lr"][0] == CONFIG.lr and plan["lr"][2] < plan["lr"][1] < CONFIG.lr  # cosine
    progress = train(bundle, tmp_path / "full", None, resume=False, quiet=True)
    history = progress["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for record in history:  # pruned to 80%, grown back to 75%, in the packed buffers of the same step
        assert all(before >= grown > pruned for before, pruned, grown in record["mutation"].values())
    trainer = Trainer(CONFIG, tmp_path / "host")
    before = {n: layer.mask.clone() for n, layer in trainer.layers.items()}
    load_trained(bundle, trainer, run=str(tmp_path / "full"))
    _, accuracy = trainer.evaluate()
    assert accuracy > 0.6
    assert trainer.sparsity() == pytest.approx(0.75, abs=0.01)
    for name, layer in trainer.layers.items():
        assert not torch.equal(layer.mask, before[name]), name  # the masks mutated on the "board"
        assert float((layer.weight.detach() * ~layer.mask).abs().max()) == 0.0
        assert layer.scheme.is_legal(layer.mask)
    assert int(dict(trainer.model.named_buffers())["features.bn1.num_batches_tracked"]) == 3 * (len(trainer.data.train_y) // 64)


def test_bundle_resume_repeats_the_uninterrupted_run(bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    full = train(bundle, tmp_path / "full", 2, resume=False, quiet=True)
    train(bundle, tmp_path / "split", 1, resume=False, quiet=True)
    with pytest.raises(Exception, match="already holds a run"):
        train(bundle, tmp_path / "split", 2, resume=False, quiet=True)
    split = train(bundle, tmp_path / "split", 2, resume=True, quiet=True)
    assert split["history"][1]["train_loss"] == full["history"][1]["train_loss"]
    a, b = np.load(tmp_path / "full" / "state.npz"), np.load(tmp_path / "split" / "state.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_export_cli_writes_a_bundle_and_refuses_bad_runs(tmp_path: pathlib.Path) -> None:
    runner = CliRunner()
    args = ["export", "--train", "--target", "host", "--dataset", "digits", "--model", "small_cnn",
            "--scheme", "channel", "--sparsity", "0.5", "--epochs", "1"]
    done = runner.invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "b" / "mest_driver" / "__main__.py").exists() and (tmp_path / "b" / "README.md").exists()
    for extra, message in (([], "already exists"), (["--optimizer", "adam"], "SGD"),
                           (["--data-efficient", "--remove-data-epoch", "1", "--remove-n", "10"], "data_efficiency"),
                           (["--freeze", "progressive"], "layer_freezing"), (["--data-sieving", "0.2"], "data_sieving"),
                           (["--agc"], "agc")):
        out = tmp_path / ("b" if not extra else f"bad{len(extra)}")
        done = runner.invoke(cli, [*args, *extra, "--out", str(out)])
        assert done.exit_code == 2 and message in done.output, done.output
        assert not extra or not out.exists()  # nothing half-written
    done = runner.invoke(cli, ["export", "--out", str(tmp_path / "c")])
    assert done.exit_code == 2 and "--train" in done.output
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_load_trained_refuses_another_model(bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    train(bundle, bundle / "run", 1, resume=False, quiet=True)
    other = Trainer(dataclasses.replace(CONFIG, model="resnet32"), tmp_path / "other")
    with pytest.raises(MestError, match="another model"):
        load_trained(bundle, other)


def test_bundle_kernels_are_built_with_the_runs_tuning_records(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --train --work-dir DIR` (or `--tuning quick`) builds the bundle's kernels with those records."""
    from mest_compile.compiler.step import bundle as bundle_module

    asked: list[tuple[str, ConvGeometry]] = []

    class Spy:
        key = "spy"

        def choice(self, family: object, geometry: ConvGeometry, target: object) -> tuple[None, dict[str, object]]:
            asked.append((getattr(family, "name"), geometry))
            return None, {}

    handed: list[tuple[object, object]] = []
    monkeypatch.setattr(bundle_module, "records_for", lambda work_dir, tuning: handed.append((work_dir, tuning)) or Spy())
    config = dataclasses.replace(CONFIG, work_dir="tuned-for-this-run")
    export_bundle(Trainer(config, tmp_path / "run"), as_target("host"), tmp_path / "bundle")
    assert handed == [("tuned-for-this-run", "off")]
    assert "block" in {name for name, _ in asked}  # every sparse layer's kernels asked the records
