"""Per-layer sparsity profiles: MEST's YAML files, uniform and Erdos-Renyi-Kernel profiles.

A MEST profile maps parameter names to sparsities, each value on the line after its key:

    prune_ratios:
      layer1.0.conv1.weight:
        0.9
    rho:
      0.001

``rho`` is unused and the VGG files' ``mask_update_decay_epoch`` / ``lower_bound`` /
``upper_bound`` are ignored, as in the reference. Our one extension is ``ratio_space: kernel``:
the values are MEST pattern kernel-level ratios (0.775 for 90%) and are read as overall sparsity
``1 - (1 - r_k) * 4/9`` once, here, so the pattern scheme's own conversion is not applied twice.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
import yaml
from torch import nn

from mest_compile.errors import MestError
from mest_compile.io import atomic_write_text
from mest_compile.registry import Registry

# Keys MEST's profile files carry that the reference reads and then ignores.
_IGNORED_KEYS = ("rho", "mask_update_decay_epoch", "lower_bound", "upper_bound")
_RATIO_SPACES = ("overall", "kernel")
# The kernel-level values found in MEST's pattern profiles (for 60/70/80/90/95/98% overall).
_MEST_KERNEL_VALUES = (0.1, 0.325, 0.55, 0.775, 0.887, 0.955)


def kernel_to_overall(ratio: float) -> float:
    """Overall 3x3 sparsity of a MEST pattern kernel-level ratio (0.775 -> 0.9).

    Every kept kernel keeps 4 of its 9 entries. Rounded so that 0.775 reads back as 0.9.
    """
    return round(1.0 - (1.0 - ratio) * 4.0 / 9.0, 12)


def _check_value(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise MestError(f"sparsity of {name!r} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class Profile(Mapping[str, float]):
    """Per-layer sparsity: parameter name -> overall sparsity, in model order.

    `ratios` keeps the values as written; indexing gives overall sparsity, converting
    kernel-space values once.

    Example:
        >>> p = Profile({"layer1.0.conv1.weight": 0.775}, ratio_space="kernel")
        >>> p["layer1.0.conv1.weight"]
        0.9
    """

    ratios: Mapping[str, float]
    # "overall" is what every non-pattern MEST profile means; "kernel" is opt-in per file.
    ratio_space: str = "overall"
    _overall: Mapping[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ratio_space not in _RATIO_SPACES:
            raise MestError(f"ratio_space must be one of {', '.join(_RATIO_SPACES)}, got {self.ratio_space!r}")
        ratios = {}
        for name, value in dict(self.ratios).items():
            if not isinstance(name, str) or not name:
                raise MestError(f"profile layer names must be non-empty strings, got {name!r}")
            ratios[name] = _check_value(name, value)
        convert = kernel_to_overall if self.ratio_space == "kernel" else float
        object.__setattr__(self, "ratios", MappingProxyType(ratios))
        object.__setattr__(self, "_overall", MappingProxyType({k: convert(v) for k, v in ratios.items()}))

    def __getitem__(self, name: str) -> float:
        return self._overall[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._overall)

    def __len__(self) -> int:
        return len(self._overall)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return self.ratio_space == other.ratio_space and dict(self.ratios) == dict(other.ratios)

    def __hash__(self) -> int:
        return hash((self.ratio_space, tuple(self.ratios.items())))


def _canonical(name: str) -> str:
    # DataParallel prefixes every name with "module."; only the prefix is stripped (the
    # reference strips it anywhere in the name, which would mangle e.g. "submodule.conv").
    return name[len("module.") :] if name.startswith("module.") else name


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a MEST profile YAML file unchanged.

    Raises:
        MestError: naming the file (and the key) for a missing file, bad YAML, an unknown key
            or a bad value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise MestError(f"cannot read profile {str(path)!r}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise MestError(f"profile {str(path)!r}{line}: not valid YAML") from None
    if not isinstance(data, dict) or "prune_ratios" not in data:
        raise MestError(f"profile {str(path)!r}: expected a mapping with a 'prune_ratios' key")
    for key in data:
        if key not in ("prune_ratios", "ratio_space", *_IGNORED_KEYS):
            known = ", ".join(("prune_ratios", "ratio_space", *_IGNORED_KEYS))
            raise MestError(f"profile {str(path)!r}: unknown key {key!r}; known: {known}")
    raw = data["prune_ratios"] or {}
    if not isinstance(raw, dict):
        raise MestError(f"profile {str(path)!r}: 'prune_ratios' must map parameter names to sparsities")
    ratios: dict[str, float] = {}
    for key, value in raw.items():
        name = _canonical(str(key))
        if name in ratios:
            raise MestError(f"profile {str(path)!r}: layer {name!r} is listed twice")
        try:
            ratios[name] = _check_value(name, value)
        except MestError as err:
            raise MestError(f"profile {str(path)!r}: {err}") from None
    space = data.get("ratio_space", "overall")
    if space not in _RATIO_SPACES:
        known = ", ".join(_RATIO_SPACES)
        raise MestError(f"profile {str(path)!r}: key 'ratio_space' must be one of {known}, got {space!r}")
    return Profile(ratios, ratio_space=space)


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Write `profile` in MEST's format, atomically (a reader never sees half a file)."""
    lines = ["prune_ratios:"]
    for name, value in profile.ratios.items():
        # Parameter names are plain identifiers and dots; anything else is quoted for YAML.
        key = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) else yaml.safe_dump(name).splitlines()[0]
        lines += [f"  {key}:", f"    {value!r}"]
    # MEST's loader ignores rho, but every one of its files has it.
    lines += ["rho:", "  0.001"]
    if profile.ratio_space != "overall":
        lines += ["ratio_space:", f"  {profile.ratio_space}"]
    atomic_write_text(path, "\n".join(lines) + "\n")


def looks_like_mest_kernel_space(profile: Mapping[str, float]) -> bool:
    """True when every value is one of MEST's pattern kernel-level ratios (0.775 for 90% ...).

    Such a file fed as overall sparsity trains far denser than its name says; see MEST_SPEC 1.3.
    """
    values = list(profile.ratios.values() if isinstance(profile, Profile) else profile.values())
    return bool(values) and all(any(math.isclose(v, k, abs_tol=1e-9) for k in _MEST_KERNEL_VALUES) for v in values)


# Layer selections: which convs a generated profile covers.
LAYER_SELECTIONS: Registry[Callable[[nn.Module], list[str]]] = Registry("layer selection")


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(f"{n}.weight" if n else "weight", m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@LAYER_SELECTIONS.register("mest")
def _mest_layers(model: nn.Module) -> list[str]:
    """What MEST's ResNet-32 profiles list: groups=1 convs but the stem and 1x1 convs."""
    convs = _convs(model)
    return [n for i, (n, m) in enumerate(convs) if i > 0 and m.groups == 1 and tuple(m.kernel_size) != (1, 1)]


@LAYER_SELECTIONS.register("all")
def _all_layers(model: nn.Module) -> list[str]:
    """Every conv of the model."""
    return [n for n, _ in _convs(model)]


def _selected(model: nn.Module, layers: str) -> dict[str, torch.Size]:
    shapes = {n: m.weight.shape for n, m in _convs(model)}
    return {n: shapes[n] for n in LAYER_SELECTIONS.get(layers)(model)}


def uniform_profile(model: nn.Module, sparsity: float, layers: str = "mest") -> Profile:
    """The same `sparsity` for every selected conv of `model`."""
    value = _check_value("uniform profile", sparsity)
    return Profile({n: value for n in _selected(model, layers)})


def erk_profile(model: nn.Module, sparsity: float, layers: str = "mest") -> Profile:
    """Erdos-Renyi-Kernel sparsities (RigL) with overall sparsity `sparsity` over the selection.

    A layer's density is proportional to sum(shape) / prod(shape), scaled so that the selected
    layers together keep a `1 - sparsity` fraction of their weights. A layer whose density would
    exceed 1 is made dense and the others are rescaled, until every density fits.
    """
    target = _check_value("ERK profile", sparsity)
    shapes = _selected(model, layers)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    scale = 0.0
    while True:
        # Weights left to distribute once the dense layers took theirs.
        budget = (1.0 - target) * sum(sizes.values()) - sum(sizes[n] for n in dense)
        weighted = sum(raw[n] * sizes[n] for n in raw if n not in dense)
        if weighted == 0.0:
            break
        scale = budget / weighted
        # Pinning a layer to dense frees budget, which only raises the others' densities, so
        # every layer over 1 can be pinned at once.
        over = {n for n in raw if n not in dense and scale * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    ratios = {n: 0.0 if n in dense else min(max(1.0 - scale * raw[n], 0.0), 1.0 - 1e-12) for n in raw}
    return Profile(ratios)
