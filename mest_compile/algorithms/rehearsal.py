"""Rehearsal (ER, DER++) as a training algorithm: a reservoir buffer replayed from the second task on.

After every optimizer step the step's examples (the stored image is the un-augmented one) enter
the reservoir buffer with the logits the step computed before its update, DER++'s targets. From
the second task on, after the current batch's backward the method's buffer loss is computed on
fresh buffer draws (augmented as training batches are, on the trainer's data generator) and
back-propagated too: gradients add, so the optimizer applies
`CE + alpha MSE + beta CE'` (DER++) as one step. It runs before any algorithm that reads or masks
the gradient (Elastic Mutation's score, SparCL's gradient masking), and its forwards pass through
the model's hooked layers, so the FLOPs counter counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mest_compile.algorithms.continual import task_split
from mest_compile.errors import MestError
from mest_compile.train.augment import augment_batch
from mest_compile.train.continual.buffer import ReservoirBuffer
from mest_compile.train.continual.replay import REPLAY
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import require_non_negative, require_positive, setting

if TYPE_CHECKING:
    from mest_compile.train.continual.tasks import TaskSplit
    from mest_compile.train.loop import Trainer

# The buffer's generator is the run's seed plus this, so it draws apart from batches and growth.
BUFFER_SEED_OFFSET = 7919


@dataclass(frozen=True)
class RehearsalConfig:
    """Which rehearsal method, how large a buffer, how much weight (the `rehearsal` section)."""

    replay: str | None = setting(None, "rehearsal method: er | derpp (off when empty)")
    # SparCL's script and DER++'s CIFAR-10 setting.
    buffer_size: int = setting(500, "examples kept in the reservoir buffer")
    # SparCL's script: alpha 0.1 (its --buffer_weight), beta 0.5 (--buffer_weight_beta).
    replay_alpha: float = setting(0.1, "DER++ weight of the MSE between buffer logits and stored logits")
    replay_beta: float = setting(0.5, "weight of the cross-entropy on buffer examples (DER++'s beta, ER's weight)")

    def __post_init__(self) -> None:
        if self.replay is not None:
            REPLAY.get(self.replay)  # an unknown method fails here, listing the known ones
        require_positive(self, "buffer_size")
        require_non_negative(self, "replay_alpha", "replay_beta")


class Rehearsal(TrainingAlgorithm):
    """Reservoir buffer, replay loss from the second task on (module docstring)."""

    def __init__(self, config: RehearsalConfig) -> None:
        self.config = config
        self.method = REPLAY.get(config.replay or "")
        self.buffer: ReservoirBuffer | None = None
        self.split: TaskSplit | None = None
        self.task = 0

    def setup(self, trainer: Trainer) -> None:
        """A buffer no larger than the training set."""
        n = len(trainer.data.train_y)
        if self.config.buffer_size > n:
            raise MestError(f"--buffer-size {self.config.buffer_size} is larger than the {n} training examples")
        self.buffer = ReservoirBuffer(self.config.buffer_size, trainer.config.run.seed + BUFFER_SEED_OFFSET)
        self.split = task_split(trainer.config, trainer.data.num_classes)

    def _buffer(self) -> ReservoirBuffer:
        if self.buffer is None:
            raise MestError("the rehearsal algorithm was used before setup(trainer)")
        return self.buffer

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Note the epoch's task: replay starts with the second."""
        if self.split is not None:
            self.task = self.split.task_of(epoch)

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """Add the replay loss's gradient to the current batch's."""
        buffer = self._buffer()
        if self.task == 0 or not len(buffer):
            return
        cfg = self.config

        def draw(size: int) -> dict[str, torch.Tensor]:
            # Stored un-augmented; augmented per draw like a training batch (SparCL's buffer transform).
            batch = buffer.draw(size)
            if trainer.data.augment:
                batch["x"] = augment_batch(batch["x"], trainer.data_rng, fill=trainer.data.pad_fill)
            return batch

        loss = self.method(trainer.model, draw, trainer.config.optim.batch_size, cfg.replay_alpha, cfg.replay_beta)
        loss.backward()

    def after_step(self, trainer: Trainer, step: int, logits: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor) -> None:
        """Offer the step's un-augmented examples and their pre-update logits to the buffer."""
        self._buffer().add_(trainer.data.train_x[index], y, logits)

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """How full the buffer is and how many examples it saw."""
        buffer = self._buffer()
        return {"buffer": {"method": self.config.replay, "size": len(buffer), "seen": buffer.seen}}

    def state_dict(self) -> dict[str, Any]:
        """The buffer: its examples, stream position and generator."""
        return self._buffer().state_dict()

    def on_checkpoint_load(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """Restore the buffer onto the model's device."""
        self._buffer().load_state_dict(state, device=trainer.data.train_x.device)


ALGORITHMS.add("rehearsal", AlgorithmSpec(
    section="rehearsal", config=RehearsalConfig, factory=Rehearsal, enabled=lambda c: c.replay is not None,
    summary_defaults={"buffer": None},
))
