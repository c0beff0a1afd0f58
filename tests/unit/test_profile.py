"""Profiles: MEST's YAML read unchanged, kernel-space opt-in, uniform and ERK profiles."""

from __future__ import annotations

import math
import pathlib

import pytest
from torch import nn

from mest_compile.errors import MestError
from mest_compile.sparsity.profile import (
    Profile,
    erk_profile,
    load_profile,
    looks_like_mest_kernel_space,
    save_profile,
    uniform_profile,
)

NAMES = [f"layer{s}.{b}.conv{c}.weight" for s in (1, 2, 3) for b in range(5) for c in (1, 2)]


def mest_yaml(values: dict[str, float], extra: str = "rho:\n  0.001\n") -> str:
    """A profile written the way MEST's files are (value on the line after its key)."""
    body = "".join(f"  {name}:\n    {value}\n" for name, value in values.items())
    return f"prune_ratios:\n{body}{extra}"


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        shortcut = stride != 1 or cin != cout
        self.downsample = nn.Sequential()
        if shortcut:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet32Names(nn.Module):
    """MEST's ResNet-32 parameter names and layout at a small width (forward not needed)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, width, 2 * width, 4 * width]
        for stage in (1, 2, 3):
            cin, cout = widths[stage - 1], widths[stage]
            blocks = [Block(cin if b == 0 else cout, cout, 2 if (b == 0 and stage > 1) else 1) for b in range(5)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(4 * width, 10)


def test_load_mest_uniform_profile(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "resnet32_0.9.yaml"
    path.write_text(mest_yaml(dict.fromkeys(NAMES, 0.9)))
    profile = load_profile(path)
    assert list(profile) == NAMES and set(profile.values()) == {0.9}
    assert profile.ratio_space == "overall" and not looks_like_mest_kernel_space(profile)


def test_load_mest_uneven_profile_and_vgg_keys(tmp_path: pathlib.Path) -> None:
    values = dict.fromkeys(NAMES, 0.9) | {NAMES[0]: 0.6, NAMES[1]: 0.7}
    vgg_keys = (
        "rho:\n  0.001\n\nmask_update_decay_epoch:\n  100-130\n"
        "lower_bound:\n  0.1-0.1-0.1\nupper_bound:\n  0.05-0.075-0.1\n"
    )
    path = tmp_path / "uneven.yaml"
    path.write_text(mest_yaml(values, vgg_keys))
    profile = load_profile(path)
    assert profile["layer1.0.conv1.weight"] == 0.6 and profile["layer1.0.conv2.weight"] == 0.7
    assert sum(v == 0.9 for v in profile.values()) == 28


def test_module_prefix_is_stripped_and_int_values_accepted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "dp.yaml"
    path.write_text(mest_yaml({"module.layer1.0.conv1.weight": 0, "submodule.conv.weight": 0.5}))
    assert dict(load_profile(path)) == {"layer1.0.conv1.weight": 0.0, "submodule.conv.weight": 0.5}


def test_kernel_space_is_converted_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pattern.yaml"
    path.write_text(mest_yaml(dict.fromkeys(NAMES, 0.775), "rho:\n  0.001\nratio_space:\n  kernel\n"))
    profile = load_profile(path)
    assert profile.ratio_space == "kernel" and set(profile.ratios.values()) == {0.775}
    assert set(profile.values()) == {0.9}
    # The same file without the key is what MEST ships: flagged, not converted.
    plain = tmp_path / "plain.yaml"
    plain.write_text(mest_yaml(dict.fromkeys(NAMES, 0.775)))
    assert looks_like_mest_kernel_space(load_profile(plain)) and set(load_profile(plain).values()) == {0.775}
    assert Profile({"a": 0.1, "b": 0.955}).keys() and looks_like_mest_kernel_space(Profile({"a": 0.1, "b": 0.955}))
    assert not looks_like_mest_kernel_space(Profile({}))


@pytest.mark.parametrize("space", ["overall", "kernel"])
def test_round_trip(tmp_path: pathlib.Path, space: str) -> None:
    profile = Profile({n: 0.1 + i / 100 for i, n in enumerate(NAMES)}, ratio_space=space)
    path = tmp_path / "out.yaml"
    save_profile(profile, path)
    assert load_profile(path) == profile
    assert path.read_text().startswith("prune_ratios:\n  layer1.0.conv1.weight:\n    0.1\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out.yaml"]  # no temp file left behind


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("prune_ratios:\n  a.weight:\n    0.9\nlearning_rate:\n  0.1\n", "learning_rate"),
        ("prune_ratios:\n  a.weight:\n    1.5\n", "a.weight"),
        ("prune_ratios:\n  a.weight:\n    -0.1\n", "a.weight"),
        ("prune_ratios:\n  a.weight:\n    ninety\n", "a.weight"),
        ("prune_ratios:\n  a.weight:\n    true\n", "a.weight"),
        ("prune_ratios:\n  a.weight: [0.9\n", "line"),
        ("rho:\n  0.001\n", "prune_ratios"),
        ("- 0.9\n", "prune_ratios"),
        ("prune_ratios:\n  - 0.9\n", "prune_ratios"),
        ("prune_ratios:\n  a.weight:\n    0.9\nratio_space:\n  channel\n", "ratio_space"),
        ("prune_ratios:\n  a.weight:\n    0.9\n  module.a.weight:\n    0.9\n", "a.weight"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: pathlib.Path, text: str, named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MestError, match=f"bad.yaml.*{named}"):
        load_profile(path)


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(MestError, match="nope.yaml"):
        load_profile(tmp_path / "nope.yaml")


def test_profile_validates_values() -> None:
    with pytest.raises(MestError, match="x"):
        Profile({"x": 1.0})
    with pytest.raises(MestError, match="cubic"):
        Profile({"x": 0.5}, ratio_space="cubic")


def test_mest_layer_selection_matches_the_resnet32_profiles() -> None:
    model = ResNet32Names()
    assert list(uniform_profile(model, 0.9)) == NAMES
    everything = uniform_profile(model, 0.9, layers="all")
    assert len(everything) == 33 and "conv1.weight" in everything and "layer2.0.downsample.0.weight" in everything
    with pytest.raises(MestError, match="known: mest, all"):
        uniform_profile(model, 0.9, layers="some")


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.98])
def test_erk_overall_sparsity_equals_the_target(target: float) -> None:
    model = ResNet32Names(width=8)
    profile = erk_profile(model, target, layers="all")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    sizes = {n: math.prod(shapes[n]) for n in profile}
    kept = sum((1 - profile[n]) * sizes[n] for n in profile)
    assert kept == pytest.approx((1 - target) * sum(sizes.values()), rel=1e-9)
    # Denser where the layer is small for its dimensions: the stem beats the 3x3 block convs.
    assert profile["conv1.weight"] <= profile["layer1.0.conv1.weight"] < profile["layer3.1.conv1.weight"]
    raw = {n: sum(shapes[n]) / sizes[n] for n in profile if profile[n] > 0}
    ratios = {(1 - profile[n]) / raw[n] for n in raw}  # density / raw score: one scale for all
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_erk_pins_overfull_layers_to_dense() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 256, 3), nn.Conv2d(256, 256, 3))
    profile = erk_profile(model, 0.5, layers="all")
    assert profile["0.weight"] == 0.0 and profile["1.weight"] == 0.0
    sizes = [18, 4608, 589824]
    kept = sum((1 - v) * s for v, s in zip(profile.values(), sizes))
    assert kept == pytest.approx(0.5 * sum(sizes))
    assert set(erk_profile(model, 0.0, layers="all").values()) == {0.0}


def test_uniform_profile_checks_its_sparsity() -> None:
    with pytest.raises(MestError, match="1.2"):
        uniform_profile(ResNet32Names(), 1.2)
    assert isinstance(uniform_profile(ResNet32Names(), 0.5)["layer1.0.conv1.weight"], float)
