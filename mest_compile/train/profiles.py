"""Which layers a run makes sparse, and how sparse: a MEST YAML file or a generated profile."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mest_compile.registry import Registry
from mest_compile.sparsity.profile import Profile, erk_profile, load_profile, uniform_profile
from mest_compile.train.config import TrainConfig

# `--profile uniform|erk|dense` generates the profile for the model at `--sparsity`; anything else is a file.
GENERATED: Registry[Callable[[nn.Module, float], Profile]] = Registry("generated profile")
GENERATED.add("uniform", uniform_profile)
GENERATED.add("erk", erk_profile)
# No sparse layer: the dense baseline a sparse run is compared with.
GENERATED.add("dense", lambda model, sparsity: Profile({}))


def resolve_profile(config: TrainConfig, model: nn.Module) -> Profile:
    """The run's profile, with `--ratio-space kernel` applied to generated and file profiles alike."""
    sparse = config.sparse
    name = sparse.profile or "uniform"
    profile = GENERATED.get(name)(model, sparse.sparsity) if name in GENERATED else load_profile(name)
    if sparse.ratio_space == "kernel" and profile.ratio_space == "overall":
        profile = Profile(profile.ratios, ratio_space="kernel")
    return profile
