"""SpFDE's layer freezing as a training algorithm: a prefix of the model stops training.

The model is cut into units in execution order (a residual block, or a conv or linear layer with
the batch norm after it); the last unit, the classifier, always trains. A schedule says how many
leading units are frozen at each epoch. A frozen unit keeps its weights and masks: its parameters
stop requiring gradients (no weight gradient, and autograd stops the backward at the first
trainable unit), its optimizer state is dropped, Elastic Mutation skips its layers, and its batch
norms run in eval mode (whoever sets the model to training mode) so their running statistics stay
too. Unfreezing (single-shot-resume, periodic) restarts its optimizer state from zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import require_non_negative, setting

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

# schedule(epoch, start, interval, depth) -> how many leading units are frozen at `epoch`.
Schedule = Callable[[int, int, int, int], int]
SCHEDULES: Registry[Schedule] = Registry("freezing schedule")
SCHEDULES.add("progressive", lambda e, start, k, depth: 0 if e < start else min(depth, 1 + (e - start) // k))
SCHEDULES.add("single-shot", lambda e, start, k, depth: depth if e >= start else 0)
SCHEDULES.add("single-shot-resume", lambda e, start, k, depth: depth if start <= e < start + k else 0)
SCHEDULES.add("periodic", lambda e, start, k, depth: depth if e >= start and (e - start) // k % 2 == 0 else 0)

UNITS = ("block", "layer")


@dataclass(frozen=True)
class LayerFreezingConfig:
    """Which layers stop training, and when (the `freezing` section)."""

    freeze: str | None = setting(None, "freeze layers front to back: progressive | single-shot | single-shot-resume "
                                       "| periodic")
    # SpFDE freezes once the front layers have converged; on digits they have after a quarter of
    # the epochs (docs/ALGORITHMS.md measures it), and earlier freezing gives the most savings.
    freeze_start_epoch: int | None = setting(None, "first epoch with a frozen layer (default: a quarter of the epochs)")
    # MEST's 30-epoch digits recipe mutates every 2 epochs: a unit freezes every second update.
    freeze_interval: int = setting(4, "progressive: epochs between freezing steps; single-shot-resume: epochs "
                                      "frozen; periodic: epochs per frozen and per active phase")
    # Residual blocks (SpFDE's figure freezes blocks); models without blocks freeze layer by layer.
    freeze_unit: str = setting("block", "block: a residual block freezes as one; layer: each conv or linear layer")
    # SpFDE's figure ends with only the last block active; the classifier is a unit of its own here.
    freeze_depth: int | None = setting(None, "how many leading units may freeze (default: all but the last block "
                                             "and the classifier)")

    def __post_init__(self) -> None:
        if self.freeze is not None and self.freeze not in SCHEDULES:
            raise MestError(f"freeze must be one of {', '.join(SCHEDULES.names())}, got {self.freeze!r}")
        if self.freeze_unit not in UNITS:
            raise MestError(f"freeze_unit must be {' or '.join(UNITS)}, got {self.freeze_unit!r}")
        require_non_negative(self, "freeze_start_epoch")
        for name in ("freeze_interval", "freeze_depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MestError(f"{name} must be a positive integer, got {value!r}")


def _block(name: str) -> str | None:
    # `layer1.0.conv1` belongs to block `layer1.0`; a name without an index is no block.
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return ".".join(parts[: index + 1]) if index is not None else None


def freezing_units(model: nn.Module, unit: str) -> list[list[nn.Module]]:
    """The model's modules with parameters, grouped into freezing units in model order."""
    units: list[list[nn.Module]] = []
    current: str | None = None
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        block = _block(name) if unit == "block" else None
        if block is not None:
            starts = block != current
        else:
            starts = isinstance(module, (nn.Conv2d, nn.Linear)) or not units
        if starts:
            units.append([])
        units[-1].append(module)
        current = block
    return units


class LayerFreezing(TrainingAlgorithm):
    """Freezes the leading units the schedule names at every epoch start."""

    def __init__(self, config: LayerFreezingConfig) -> None:
        self.config = config
        self.units: list[list[nn.Module]] = []
        self.frozen = 0
        self.start = 0
        self.depth = 0
        self._held: dict[nn.Module, RemovableHandle] = {}

    def setup(self, trainer: Trainer) -> None:
        """Cut the model into units; refuse a schedule that would leave Elastic Mutation nothing to mutate."""
        # Imported here: importing it at the top would register the mutation before the freezing,
        # and a frozen layer must be frozen before the mutation of the same epoch looks at it.
        from mest_compile.algorithms.elastic_mutation import resolve_schedule

        cfg = self.config
        if trainer.config.run.engine != "torch":
            raise MestError("--freeze trains with --engine torch (the compiled whole step has no frozen layers)")
        self.units = freezing_units(trainer.model, cfg.freeze_unit)
        if cfg.freeze_depth is not None and cfg.freeze_depth >= len(self.units):
            raise MestError(f"freeze_depth {cfg.freeze_depth} leaves nothing to train: the model has "
                            f"{len(self.units)} {cfg.freeze_unit} units, the last of which always trains")
        self.depth = cfg.freeze_depth or max(1, len(self.units) - 2)
        epochs = trainer.config.optim.epochs
        self.start = cfg.freeze_start_epoch if cfg.freeze_start_epoch is not None else epochs // 4
        mutation = resolve_schedule(trainer.config.mutation, trainer.config.sparse.ratio_space)
        sparse = set(map(id, trainer.layers.values()))
        for epoch in range(epochs):
            frozen = {id(m) for unit in self.units[: self.frozen_at(epoch)] for m in unit}
            if mutation is not None and mutation.updates_at(epoch) and sparse <= frozen:
                raise MestError(f"--freeze {cfg.freeze} has frozen every sparse layer at epoch {epoch}, where "
                                "Elastic Mutation is set to mutate them; freeze later or end the mutation earlier")

    def frozen_at(self, epoch: int) -> int:
        """How many leading units are frozen during `epoch`."""
        cfg = self.config
        assert cfg.freeze is not None
        return SCHEDULES.get(cfg.freeze)(epoch, self.start, cfg.freeze_interval, self.depth)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Freeze (or unfreeze) units so the leading `frozen_at(epoch)` are frozen; the record's `frozen`."""
        self.frozen = self.frozen_at(epoch)
        state = trainer.optimizer.state
        for i, unit in enumerate(self.units):
            trains = i >= self.frozen
            for module in unit:
                for param in module.parameters(recurse=False):
                    param.requires_grad_(trains)
                    if not trains:  # no gradient, no momentum: SGD skips it, and its memory goes
                        param.grad = None
                        state.pop(param, None)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    self._hold_statistics(module, not trains)
        return {"frozen": self.frozen}

    def _hold_statistics(self, norm: nn.Module, frozen: bool) -> None:
        # A frozen batch norm normalises with its running statistics and leaves them alone, whoever
        # puts the model in training mode (the trainer each epoch, AGC's full pass): a pre-hook
        # switches it to eval mode before every forward.
        handle = self._held.pop(norm, None)
        if handle is not None:
            handle.remove()
        if frozen:
            self._held[norm] = norm.register_forward_pre_hook(_eval_mode)

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """How many units the run had and how many were frozen at its end."""
        return {"frozen_units": self.frozen, "freezing_units": len(self.units)}


def _eval_mode(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.train(False)


def _enabled(config: LayerFreezingConfig) -> bool:
    return config.freeze is not None


ALGORITHMS.add("layer_freezing", AlgorithmSpec(
    section="freezing", config=LayerFreezingConfig, factory=LayerFreezing, enabled=_enabled,
    record_defaults={"frozen": 0}, summary_defaults={"frozen_units": 0, "freezing_units": 0},
))
