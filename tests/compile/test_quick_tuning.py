"""`--tuning quick`: each layer's schedules searched for this CPU on first use, checked, cached per machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.target import as_target
from mest_compile.compiler.tune.machine import MACHINE_FILE, QuickRecords, layer_name, records_for
from mest_compile.errors import MestError

SCHEME = "free_block_prune_column_4"
GEO = ConvGeometry(8, 8, 8, 8, 3, 3, stride=1, padding=1)


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("machine-cache")
    QuickRecords(root, progress=Lines()).records(family_for(SCHEME), GEO)
    return root


def _layer_dir(root: Path) -> Path:
    (machine,) = (root / "tuning").iterdir()
    return machine / layer_name(family_for(SCHEME), GEO)


def test_first_use_writes_a_metaschedule_database_for_this_machine(cache_root: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    work_dir = _layer_dir(cache_root)
    manifest = json.loads((work_dir / "manifest.json").read_text())
    assert {e["which"] for e in manifest["kernels"].values()} == {"forward", "dgrad", "wgrad"}
    for entry in manifest["kernels"].values():
        # Picked by paired re-measurement: never slower than the hand-written schedule it was measured beside.
        assert entry["trace"] is not None and 0 < entry["tuned_s"] <= entry["untuned_s"]
        assert len(entry["variants"]) >= 2  # tile variants were searched, not just the default
    records = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False).get_all_tuning_records()
    assert len(records) >= 6  # every variant x design space that ran (plain TVM reads the database)
    machine = json.loads((work_dir / MACHINE_FILE).read_text())
    assert machine["cpu"] and machine["target"] == as_target("host").key


def test_cached_records_are_reused_and_replayed_into_gated_kernels(cache_root: Path) -> None:
    from mest_compile.compiler.api import sparse_conv2d
    from mest_compile.compiler.formats.block import random_block_mask
    from mest_compile.compiler.runtime.cache import CACHE
    from mest_compile.compiler.runtime.records import using

    said = Lines()
    records = QuickRecords(cache_root, progress=said)
    kernels = CACHE.kernels_for(family_for(SCHEME), GEO, as_target("host"), records=records)
    assert said == []  # nothing searched again
    assert kernels.tuned == ("forward", "dgrad", "wgrad")
    # The replayed kernels at another batch and mask than the search measured with, through the public op.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, 8, 8, generator=gen, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, generator=gen, requires_grad=True)
    mask = random_block_mask(8, (8, 3, 3), 0.6, gen)
    reuses = CACHE.stats.reuses
    with using(records):
        sparse_conv2d(x, w, mask, scheme=SCHEME, padding=1).square().sum().backward()
    assert CACHE.stats.reuses > reuses  # the op ran the tuned kernels built above
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr * mask, padding=1).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-3) and torch.allclose(w.grad, wr.grad, atol=1e-3)


def test_a_corrupt_or_foreign_layer_is_refused_in_one_line_and_searched_again(
        cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "cache"
    shutil.copytree(cache_root, root)
    work_dir = _layer_dir(root)
    (work_dir / "database_tuning_record.json").write_text("not json\n")
    said = Lines()
    with pytest.warns(UserWarning, match="records are corrupt; tuning this layer again") as caught:
        QuickRecords(root, progress=said).records(family_for(SCHEME), GEO)
    assert len(str(caught[0].message).splitlines()) == 1
    assert len(said) == 1 and "tuned" in said[0]
    machine = json.loads((work_dir / MACHINE_FILE).read_text())
    (work_dir / MACHINE_FILE).write_text(json.dumps(machine | {"cpu": "Another CPU"}))
    searched: list[str] = []
    monkeypatch.setattr(QuickRecords, "_search", lambda self, family, geometry, name: searched.append(name))
    with pytest.warns(UserWarning, match="tuned for 'Another CPU'"):
        QuickRecords(root, progress=said).records(family_for(SCHEME), GEO)
    assert searched == [work_dir.name] and not work_dir.exists()  # removed, then searched again


def test_every_candidate_is_checked_against_pytorch(tmp_path: Path) -> None:
    """A candidate whose output disagrees with PyTorch is rejected, not timed."""
    from tvm import s_tir

    from mest_compile.compiler.tune.candidates import InProcessBench
    from mest_compile.compiler.tune.measurements import MeasureOptions
    from mest_compile.compiler.tune.session import Tuner, TuneOptions
    from mest_compile.compiler.tune.workload import TuneKernel

    target = as_target("host")
    tuner = Tuner(target, TuneOptions(work_dir=tmp_path, trials=0, variants=1, exhaustive=True))
    (variant,) = tuner._variants(family_for(SCHEME), TuneKernel(SCHEME, GEO, "forward", 4, 0.5))
    said = Lines()
    bench = InProcessBench(target.tvm, said, MeasureOptions(number=1, repeat=1, min_repeat_ms=0))
    sch = s_tir.Schedule(variant.module)
    tuner.kind.default_schedule(sch, "forward")
    built = bench.build(variant, sch.trace)
    assert bench.time(variant, built) is not None
    data = dict(np.load(variant.inputs_path))
    data["expected"] = data["expected"] + 1.0
    np.savez(variant.inputs_path, **data)
    assert InProcessBench(target.tvm, said, MeasureOptions()).time(variant, built) is None
    assert "wrong result" in said[-1]


def test_other_targets_get_no_quick_records(cache_root: Path) -> None:
    records = QuickRecords(cache_root, progress=Lines())
    assert records.choice(family_for(SCHEME), GEO, as_target("arm")) == (None, {})


def test_quick_tuning_and_a_work_dir_are_refused_together(tmp_path: Path) -> None:
    with pytest.raises(MestError, match="give one of them"):
        records_for(tmp_path, "quick")
    with pytest.raises(MestError, match="--tuning takes off or quick"):
        records_for(None, "deep")
    assert records_for(None, "off") is None
