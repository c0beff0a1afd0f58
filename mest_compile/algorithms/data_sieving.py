"""SpFDE's circular data sieving as a training algorithm: train on a partial set that keeps rotating.

At setup the training set is split at random into a partial set (`partial_ratio` of it) and a
removed set. Every `sieving_interval` epochs the easiest `data_sieving` fraction of the partial
set (fewest forgettings since the last sieving, then lowest mean loss; or lowest mean loss) moves
to the removed set and as many examples drawn at random from the removed set move in, so every
epoch trains on the same number of examples and every example can come back. Statistics are
recorded after each step from the forward the step trained on, as MEST's forgetting statistics
are. Examples another algorithm removed (MEST's forgetting-based removal) are in neither set:
the partial set is refilled at random from the removed set to `partial_ratio` of what remains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.sparsity.data_efficiency import ForgettingTracker, example_statistics
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import require_positive, setting

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

# criterion(tracker, candidates) -> the candidates ordered easiest first.
Criterion = Callable[[ForgettingTracker, torch.Tensor], torch.Tensor]


def _by_loss(tracker: ForgettingTracker, candidates: torch.Tensor) -> torch.Tensor:
    loss = tracker.mean_loss()[candidates].nan_to_num(nan=float("inf"))  # unseen: never the easiest
    return candidates[torch.sort(loss, stable=True).indices]


def _by_forgetting(tracker: ForgettingTracker, candidates: torch.Tensor) -> torch.Tensor:
    # Fewest forgettings first; ties (most examples are never forgotten) by lowest mean loss.
    by_loss = _by_loss(tracker, candidates)
    counts = tracker.counts()[by_loss]
    counts = torch.where(counts < 0, torch.iinfo(counts.dtype).max, counts)
    return by_loss[torch.sort(counts, stable=True).indices]


CRITERIA: Registry[Criterion] = Registry("sieving criterion")
CRITERIA.add("forgetting", _by_forgetting)
CRITERIA.add("loss", _by_loss)


@dataclass(frozen=True)
class DataSievingConfig:
    """Circular data sieving (the `sieving` section); SpFDE published no values, these are ours."""

    data_sieving: float | None = setting(None, "circular data sieving: fraction of the partial set swapped with "
                                               "removed examples at each sieving (off when empty)")
    # MEST's mutation cadence: statistics over 5 epochs say which examples stay easy.
    sieving_interval: int = setting(5, "epochs between sievings")
    # A quarter less data per epoch: digits keeps its accuracy (docs/ALGORITHMS.md).
    partial_ratio: float = setting(0.75, "fraction of the training set in the partial set")
    sieving_criterion: str = setting("forgetting", "what makes an example easy: forgetting (then loss) | loss")

    def __post_init__(self) -> None:
        require_positive(self, "sieving_interval")
        if not 0.0 < self.partial_ratio < 1.0:
            raise MestError(f"partial_ratio must lie in (0, 1), got {self.partial_ratio!r}")
        if self.data_sieving is not None and not 0.0 < self.data_sieving <= 1.0:
            raise MestError(f"data_sieving must lie in (0, 1], got {self.data_sieving!r}")
        if self.sieving_criterion not in CRITERIA:
            raise MestError(f"sieving_criterion must be one of {', '.join(CRITERIA.names())}, "
                            f"got {self.sieving_criterion!r}")


class DataSieving(TrainingAlgorithm):
    """The partial set, its statistics and the sieving at every `sieving_interval` epochs."""

    def __init__(self, config: DataSievingConfig) -> None:
        self.config = config
        self.partial = torch.zeros(0, dtype=torch.bool)  # per dataset example: in the partial set
        self.tracker: ForgettingTracker | None = None
        self.generator = torch.Generator()

    def setup(self, trainer: Trainer) -> None:
        """The random initial split (its own generator: batches and growth draw as without sieving)."""
        n = len(trainer.data.train_y)
        self.tracker = ForgettingTracker(n)
        self.generator.manual_seed(trainer.config.run.seed + 1)
        self.partial = torch.zeros(n, dtype=torch.bool)
        self.partial[torch.randperm(n, generator=self.generator)[: round(self.config.partial_ratio * n)]] = True

    def _tracker(self) -> ForgettingTracker:
        if self.tracker is None:
            raise MestError("the data sieving algorithm was used before setup(trainer)")
        return self.tracker

    def _draw(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        """`n` examples of the bool mask `pool`, at random."""
        candidates = torch.nonzero(pool).squeeze(1)
        return candidates[torch.randperm(candidates.numel(), generator=self.generator)[:n]]

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Refill to size after another algorithm's removal; sieve every `sieving_interval` epochs."""
        cfg = self.config
        available = torch.zeros_like(self.partial)
        available[self._others(trainer)] = True
        self.partial &= available
        target = round(cfg.partial_ratio * int(available.sum()))
        if int(self.partial.sum()) < target:
            self.partial[self._draw(available & ~self.partial, target - int(self.partial.sum()))] = True
        if epoch == 0 or epoch % cfg.sieving_interval or cfg.data_sieving is None:
            return {"sieved": 0}
        tracker = self._tracker()
        pool = available & ~self.partial
        swap = min(round(cfg.data_sieving * int(self.partial.sum())), int(pool.sum()))
        easiest = CRITERIA.get(cfg.sieving_criterion)(tracker, torch.nonzero(self.partial).squeeze(1))[:swap]
        back = self._draw(pool, swap)
        self.partial[easiest] = False
        self.partial[back] = True
        tracker.reset()
        return {"sieved": swap}

    def _others(self, trainer: Trainer) -> torch.Tensor:
        # The examples every other algorithm keeps (MEST's removal may have dropped some).
        kept = torch.arange(len(trainer.data.train_y))
        for algorithm in trainer.algorithms.values():
            if algorithm is not self:
                kept = algorithm.select_examples(trainer, kept)
        return kept

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """Record the step's examples (statistics of the forward the step trained on)."""
        correct, losses, margins = example_statistics(logits, y)
        self._tracker().record(index, correct, losses, margins)

    def select_examples(self, trainer: Trainer, active: torch.Tensor) -> torch.Tensor:
        """The examples of `active` in the partial set, in `active`'s order."""
        return active[self.partial[active]]

    def state_dict(self) -> dict[str, Any]:
        """The partial set, the statistics since the last sieving and the generator."""
        return {"partial": self.partial.clone(), "tracker": self._tracker().state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them: the next sieving then repeats exactly."""
        self.partial = torch.as_tensor(state["partial"]).clone()
        self._tracker().load_state_dict(state["tracker"])
        self.generator.set_state(state["generator"])


def _enabled(config: DataSievingConfig) -> bool:
    return config.data_sieving is not None


ALGORITHMS.add("data_sieving", AlgorithmSpec(
    section="sieving", config=DataSievingConfig, factory=DataSieving, enabled=_enabled,
    record_defaults={"sieved": 0},
))
