"""Elastic Mutation with the Soft Memory Bound (MEST's prune_update), reproducible and resumable.

At every update epoch of the schedule, each sparse layer is pruned to the lower (prune-to) bound
by its scheme, then randomly grown back to the upper (grow-to) bound. Grown weights start at
exactly zero. EM and EM&S differ only in the bound strings (MEST_SPEC 2.4).

The three pieces are separate: `scores.py` says what is kept, `bounds.py` says when and how
much, the layer's scheme projects onto legal masks and picks what grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.module import SparseConv2d
from mest_compile.sparsity.scores import SCORES

MomentumPolicy = Callable[[torch.optim.Optimizer | None, torch.Tensor, torch.Tensor], None]
# What happens to optimizer state when a mask changes; called with the prune survivors.
MOMENTUM_POLICIES: Registry[MomentumPolicy] = Registry("regrow momentum policy")


@MOMENTUM_POLICIES.register("reset")
@torch.no_grad()
def _reset_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, survivors: torch.Tensor) -> None:
    """Zero every param-shaped state tensor (momentum, Adam moments) outside the survivors.

    Zeroing outside the prune survivors (not just outside the new mask) also clears weights that
    were pruned and regrown in the same update, so every grown weight starts from zero weight and
    zero momentum.
    """
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.mul_(survivors.to(value.device))


@MOMENTUM_POLICIES.register("keep")
def _keep_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, survivors: torch.Tensor) -> None:
    """The reference: optimizer state is never touched (MEST_SPEC 2.1, step 4)."""


@dataclass(frozen=True)
class MutationConfig:
    """How the masks mutate."""

    # When and to which bounds; None keeps the hardened masks (MEST without a decay string).
    schedule: BoundSchedule | None = None
    # MEST's importance score is magnitude (its gradient term is zero in practice).
    score: str = "magnitude"
    # Lambda of the gradient term of "magnitude+grad" (MEST's --sp-lmd, default 0).
    sp_lmd: float = 0.0
    # "reset" gives grown weights zero momentum; "keep" is the reference (stale momentum).
    regrow_momentum: str = "reset"
    compat: Compat = Compat()
    # The growth draw comes only from a generator seeded here, so runs repeat exactly.
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", SCORES.canonical(self.score))
        object.__setattr__(self, "regrow_momentum", MOMENTUM_POLICIES.canonical(self.regrow_momentum))
        if self.schedule is not None and not isinstance(self.schedule, BoundSchedule):
            raise MestError(f"schedule must be a BoundSchedule or None, got {self.schedule!r}")
        lmd = self.sp_lmd
        if isinstance(lmd, bool) or not isinstance(lmd, (int, float)) or not math.isfinite(lmd) or lmd < 0:
            raise MestError(f"sp_lmd must be a finite number >= 0, got {self.sp_lmd!r}")
        if self.sp_lmd and not SCORES.get(self.score).uses_grad:
            raise MestError(f"sp_lmd={self.sp_lmd} has no effect with score {self.score!r}; use score 'magnitude+grad'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MestError(f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class LayerUpdate:
    """What one update did to one layer."""

    size: int
    sparsity_after_prune: float
    sparsity_after_grow: float
    # Weights of the previous mask that the prune removed.
    pruned: int
    # Weights growth added back (they start at exactly zero).
    grown: int


@dataclass(frozen=True)
class MutationReport:
    """One mask update: when, which bounds, and per-layer counts (in layer order)."""

    epoch: int
    stage: int
    lower: float
    upper: float
    layers: Mapping[str, LayerUpdate] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Overall mask sparsity over the layers after growth (what training runs at)."""
        total = sum(u.size for u in self.layers.values())
        kept = sum(round((1.0 - u.sparsity_after_grow) * u.size) for u in self.layers.values())
        return 1.0 - kept / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for metrics files)."""
        out = {"epoch": self.epoch, "stage": self.stage, "lower": self.lower, "upper": self.upper}
        return {**out, "sparsity": self.sparsity, "layers": {n: asdict(u) for n, u in self.layers.items()}}


class ElasticMutation:
    """MEST's Elastic Mutation over a set of sparse layers.

    Call `step(epoch)` at the start of every epoch, before training; `apply_masks_()` after
    every `optimizer.step()`; `observe_gradients()` after the last backward of each epoch when
    the score uses gradients.

    Example (MEST+EM on a model already built)::

        cfg = MutationConfig(BoundSchedule.parse("0.92-0.91-0.9", "0.9", "90-120", 5))
        em = ElasticMutation(sparsify(model, "irregular", profile), cfg, optimizer)
        for epoch in range(160):
            report = em.step(epoch)  # None unless the masks mutated
            train_one_epoch(model, after_every_step=em.apply_masks_)
    """

    def __init__(
        self,
        layers: Mapping[str, SparseConv2d],
        config: MutationConfig,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        for name, layer in layers.items():
            if not isinstance(layer, SparseConv2d):
                raise MestError(f"layer {name!r} is a {type(layer).__name__}, not a SparseConv2d")
        self.layers = dict(layers)
        self.config = config
        self.optimizer = optimizer
        self._score = SCORES.get(config.score)
        self._momentum = MOMENTUM_POLICIES.get(config.regrow_momentum)
        # A CPU generator: the schemes draw on it and move the draw to the weight's device, so
        # a run repeats on any device.
        self.generator = torch.Generator().manual_seed(config.seed)
        self._grads: dict[str, torch.Tensor] = {}
        self.updates = 0
        self.last_update_epoch: int | None = None

    def step(self, epoch: int) -> MutationReport | None:
        """Mutate the masks if the schedule updates at `epoch`; None when it does not.

        A second call for the epoch already mutated does nothing, so resuming mid-epoch from a
        checkpoint does not mutate twice.
        """
        schedule = self.config.schedule
        if schedule is None or not schedule.updates_at(epoch) or epoch == self.last_update_epoch:
            return None
        lower, upper = schedule.bounds(epoch)
        # A weight that does not train (a frozen layer) keeps its mask: nothing would score it anew.
        report = {name: self._update(name, layer, lower, upper) for name, layer in self.layers.items()
                  if layer.weight.requires_grad}
        # The snapshots described the weights before this update; never score with stale ones.
        self._grads.clear()
        self.updates += 1
        self.last_update_epoch = epoch
        return MutationReport(epoch, schedule.stage(epoch), lower, upper, report)

    @torch.no_grad()
    def _update(self, name: str, layer: SparseConv2d, lower: float, upper: float) -> LayerUpdate:
        weight = layer.weight
        before = layer.mask.clone()
        score = self._score(weight, self._grads.get(name), self.config.sp_lmd)
        survivors = layer.scheme.prune(weight.detach(), lower, score).to(device=weight.device, dtype=torch.bool)
        # Zeroed right away, as the reference does: growth sees the pruned weight, and every
        # position growth picks therefore starts at exactly zero.
        weight.mul_(survivors)
        if upper == 0.0:
            mask = torch.ones_like(survivors)
        elif upper == lower:
            mask = survivors
        else:
            mask = layer.scheme.grow(weight.detach(), survivors, upper, self.generator, self.config.compat)
            mask = mask.to(device=weight.device, dtype=torch.bool)
        layer.set_mask_(mask)
        # Survivors that growth overwrote (compat signed-sum-empty) are outside the mask too.
        self._momentum(self.optimizer, weight, survivors & mask)
        size = mask.numel()
        return LayerUpdate(
            size=size,
            sparsity_after_prune=1.0 - int(survivors.sum()) / size,
            sparsity_after_grow=1.0 - int(mask.sum()) / size,
            pruned=int((before & ~survivors).sum()),
            grown=int((mask & ~survivors).sum()),
        )

    @torch.no_grad()
    def observe_gradients(self) -> None:
        """Keep each sparse weight's current gradient for the next update's score.

        The reference scores after `zero_grad`, so its gradient term is always zero; calling this
        after the last backward of an epoch makes "magnitude+grad" see a real gradient. A no-op
        for scores that do not use gradients (no memory spent).
        """
        if not self._score.uses_grad:
            return
        for name, layer in self.layers.items():
            if layer.weight.grad is not None:
                self._grads[name] = layer.weight.grad.detach().clone()

    def apply_masks_(self) -> None:
        """Zero every sparse weight outside its mask (after every `optimizer.step()`)."""
        for layer in self.layers.values():
            layer.apply_mask_()

    def state_dict(self) -> dict[str, Any]:
        """Generator state, gradient snapshots and counters (the masks live in the model)."""
        return {
            "generator": self.generator.get_state(),
            "grads": {n: g.clone() for n, g in self._grads.items()},
            "updates": self.updates,
            "last_update_epoch": self.last_update_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved; the next update then repeats exactly."""
        expected = {"generator", "grads", "updates", "last_update_epoch"}
        if not isinstance(state, Mapping) or set(state) != expected:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise MestError(f"mutation state must have keys {sorted(expected)}, got {got}")
        unknown = [n for n in state["grads"] if n not in self.layers]
        if unknown:
            raise MestError(f"mutation state has gradients for unknown layer {unknown[0]!r}")
        self.generator.set_state(state["generator"])
        self._grads = {n: g.to(self.layers[n].weight.device).clone() for n, g in state["grads"].items()}
        self.updates = int(state["updates"])
        self.last_update_epoch = state["last_update_epoch"]
