"""MEST's Elastic Mutation with the Soft Memory Bound, as a training algorithm.

Wraps `sparsity.mutation.ElasticMutation` on the trainer's events, in MEST's order: mutate the
masks at the start of an update epoch (prune to the lower bound, grow to the upper bound), keep
the last gradient of the epoch for a gradient-aware score, and zero every weight outside its mask
after every optimizer step. Always enabled: without bounds the masks stay as they are, but they
are still applied after each step (momentum and weight decay must not revive pruned weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.mutation import MOMENTUM_POLICIES, ElasticMutation, MutationConfig
from mest_compile.sparsity.profile import kernel_to_overall
from mest_compile.train.sections import require_positive, setting
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer


@dataclass(frozen=True)
class ElasticMutationConfig:
    """When and how far the masks mutate (the `mutation` section); no bounds: static masks."""

    lower_bound: str | None = setting(None, "LOWER_BOUND: prune-to sparsity per stage, e.g. 0.92-0.91-0.9",
                                      text=True)
    upper_bound: str | None = setting(None, "UPPER_BOUND: grow-to sparsity per stage, e.g. 0.9-0.9-0.9", text=True)
    mask_update_decay_epoch: str | None = setting(None, "MASK_UPDATE_DECAY_EPOCH: stage boundaries, e.g. 90-120",
                                                  text=True)
    # MEST's SP_MASK_UPDATE_FREQ default.
    sp_mask_update_freq: int = setting(5, "SP_MASK_UPDATE_FREQ: mutate every N epochs (epoch 0 included)")
    # 0 is MEST's magnitude pruning (its gradient term is zero in practice).
    sp_lmd: float = setting(0.0, "weight of |gradient| in the prune score (0: magnitude only, as MEST's scripts)")
    # `keep` reproduces MEST (regrown weights keep old momentum); a fresh start is the correction.
    regrow_momentum: str = setting("reset", "reset: regrown weights start with zero momentum; keep: MEST's behaviour")

    def __post_init__(self) -> None:
        require_positive(self, "sp_mask_update_freq")
        if self.regrow_momentum not in MOMENTUM_POLICIES:
            known = " or ".join(repr(name) for name in MOMENTUM_POLICIES.names())
            raise MestError(f"regrow_momentum must be {known}, got {self.regrow_momentum!r}")
        if (self.lower_bound is None) != (self.upper_bound is None):
            raise MestError("--lower-bound and --upper-bound go together: give both or neither")
        if self.lower_bound is not None and self.mask_update_decay_epoch is None:
            # MEST silently never mutates without a decay string; say so instead.
            raise MestError("--lower-bound/--upper-bound need --mask-update-decay-epoch (masks update only when it "
                            "is set); e.g. 90-120, or one epoch past the end for a single stage")


def resolve_schedule(config: ElasticMutationConfig, ratio_space: str = "overall") -> BoundSchedule | None:
    """The mutation schedule of a run, or None for a static mask (no bounds given).

    Args:
        ratio_space: "kernel" when the bounds are MEST pattern kernel-level ratios.
    """
    if config.lower_bound is None or config.upper_bound is None:
        return None
    schedule = BoundSchedule.parse(config.lower_bound, config.upper_bound, config.mask_update_decay_epoch,
                                   config.sp_mask_update_freq)
    if ratio_space == "kernel":
        # MEST's pattern scripts pass kernel-level bounds too (0.820-0.797-0.775 for 90%). A bound of
        # 0 means "dense" before any conversion, in MEST as here.
        def convert(values: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(kernel_to_overall(v) if v > 0 else 0.0 for v in values)

        schedule = dataclasses.replace(schedule, lower=convert(schedule.lower), upper=convert(schedule.upper))
    return schedule


class ElasticMutationAlgorithm(TrainingAlgorithm):
    """Elastic Mutation on the trainer's events (see the module docstring for the order)."""

    def __init__(self, config: ElasticMutationConfig) -> None:
        self.config = config
        self.mutation: ElasticMutation | None = None

    def setup(self, trainer: Trainer) -> None:
        """Bind the mutation to the run's layers and optimizer (its growth generator is seeded here)."""
        cfg = self.config
        self.mutation = ElasticMutation(trainer.layers, MutationConfig(
            schedule=resolve_schedule(cfg, trainer.config.sparse.ratio_space),
            score="magnitude+grad" if cfg.sp_lmd > 0 else "magnitude",
            sp_lmd=cfg.sp_lmd,
            regrow_momentum=cfg.regrow_momentum,
            compat=trainer.compat,
            seed=trainer.config.run.seed,
        ), optimizer=trainer.optimizer)

    def _em(self) -> ElasticMutation:
        if self.mutation is None:
            raise MestError("the elastic mutation algorithm was used before setup(trainer)")
        return self.mutation

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """MEST's prune_update: mutate when the schedule says so; the record's `mutation` field."""
        report = self._em().step(epoch)
        if report is not None:
            trainer.masks_updated(epoch, tuple(report.layers))
        return {"mutation": report.to_dict() if report is not None else None}

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """The epoch's last gradient feeds the next update's score (a no-op for magnitude)."""
        if last:
            self._em().observe_gradients()

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """Zero every sparse weight outside its mask."""
        self._em().apply_masks_()

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """How many times the masks mutated."""
        return {"mask_updates": self._em().updates}

    def state_dict(self) -> dict[str, Any]:
        """The mutation's generator, gradient snapshots and counters."""
        return self._em().state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them; the next update then repeats exactly."""
        self._em().load_state_dict(state)


ALGORITHMS.add("elastic_mutation", AlgorithmSpec(
    section="mutation", config=ElasticMutationConfig, factory=ElasticMutationAlgorithm,
    record_defaults={"mutation": None}, summary_defaults={"mask_updates": 0},
))
