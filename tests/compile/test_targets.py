"""Targets: presets, TVM tags, dicts and legacy strings all normalise to one TVM target."""

from __future__ import annotations

import contextlib
import json

import pytest
from click.testing import CliRunner

import mest_compile.cli.targets  # noqa: F401  (registers the command)
from mest_compile.cli import cli
from mest_compile.compiler.target import resolve_target, translate_legacy
from mest_compile.errors import MestError


@pytest.mark.parametrize(("name", "kind"), [("host", "llvm"), ("arm", "llvm"), ("mali", "opencl"), ("adreno", "opencl"),
                                            ("cuda", "cuda")])
def test_presets_resolve(name: str, kind: str) -> None:
    target = resolve_target(name)
    assert target.kind.name == kind
    if kind != "llvm":
        assert target.host is not None  # GPU presets carry the host their launch code runs on


def test_arm_preset_is_aarch64_with_neon() -> None:
    spec = json.loads(str(resolve_target("arm")))
    assert spec["mtriple"] == "aarch64-linux-gnu" and "+neon" in spec["mattr"]


def test_tags_dicts_and_json() -> None:
    assert resolve_target("raspberry-pi/4b-aarch64").kind.name == "llvm"
    assert resolve_target("nvidia/nvidia-h100").kind.name == "cuda"
    by_dict = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert str(resolve_target(str(by_dict))) == str(by_dict)


def test_legacy_strings_are_translated_with_a_warning() -> None:
    assert translate_legacy("llvm -mtriple=aarch64-linux-gnu -mattr=+neon,+v8a -num-cores=4") == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+v8a"], "num-cores": 4}
    with pytest.warns(UserWarning, match="legacy target string"):
        target = resolve_target("opencl -device=mali")
    assert target.kind.name == "opencl"


@pytest.mark.parametrize(("bad", "needle"), [("nope", "unknown target 'nope'"), ("{bad", "not valid JSON"),
                                              ("opencl -device=mali -bogus=3", "bogus"), ("", "a target is")])
def test_bad_targets(bad: str, needle: str) -> None:
    legacy = pytest.warns(UserWarning, match="legacy") if " " in bad else contextlib.nullcontext()
    with pytest.raises(MestError, match=needle), legacy:
        resolve_target(bad)


def test_targets_command_lists_every_preset() -> None:
    result = CliRunner().invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"host", "arm", "mali", "adreno", "cuda"}


@pytest.mark.parametrize(
    ("target", "family", "measure", "compiler"),
    [
        ("host", "cpu", "local", None),
        ("arm", "cpu", "rpc", "aarch64-linux-gnu-gcc"),
        ("raspberry-pi/4b-aarch64", "cpu", "rpc", "aarch64-linux-gnu-gcc"),
        ('{"kind": "opencl", "device": "mali"}', "gpu", "opencl", None),
        ('{"kind": "cuda", "arch": "sm_80"}', "gpu", "local", None),
    ],
)
def test_tags_and_dicts_get_a_measuring_preset(target: str, family: str, measure: str, compiler: str | None) -> None:
    from mest_compile.compiler.target import as_target

    preset = as_target(target).preset
    assert (preset.family, preset.measure, preset.cross_compiler) == (family, measure, compiler)
