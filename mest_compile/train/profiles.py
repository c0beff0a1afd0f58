"""Which layers a run makes sparse, and how sparse: a MEST YAML file or a generated profile."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from mest_compile.registry import Registry
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.profile import Profile, erk_profile, kernel_to_overall, load_profile, uniform_profile
from mest_compile.train.config import TrainConfig

# `--profile uniform|erk|dense` generates the profile for the model at `--sparsity`; anything else is a file.
GENERATED: Registry[Callable[[nn.Module, float], Profile]] = Registry("generated profile")
GENERATED.add("uniform", uniform_profile)
GENERATED.add("erk", erk_profile)
# No sparse layer: the dense baseline a sparse run is compared with.
GENERATED.add("dense", lambda model, sparsity: Profile({}))


def resolve_profile(config: TrainConfig, model: nn.Module) -> Profile:
    """The run's profile, with `--ratio-space kernel` applied to generated and file profiles alike."""
    name = config.profile or "uniform"
    profile = GENERATED.get(name)(model, config.sparsity) if name in GENERATED else load_profile(name)
    if config.ratio_space == "kernel" and profile.ratio_space == "overall":
        profile = Profile(profile.ratios, ratio_space="kernel")
    return profile


def resolve_schedule(config: TrainConfig) -> BoundSchedule | None:
    """The mutation schedule of the run, or None for a static mask (no bounds given)."""
    if config.lower_bound is None or config.upper_bound is None:
        return None
    schedule = BoundSchedule.parse(config.lower_bound, config.upper_bound, config.mask_update_decay_epoch,
                                   config.sp_mask_update_freq)
    if config.ratio_space == "kernel":
        # MEST's pattern scripts pass kernel-level bounds too (0.820-0.797-0.775 for 90%). A bound of
        # 0 means "dense" before any conversion, in MEST as here.
        def convert(values: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(kernel_to_overall(v) if v > 0 else 0.0 for v in values)

        schedule = dataclasses.replace(schedule, lower=convert(schedule.lower), upper=convert(schedule.upper))
    return schedule
