"""AGC (AGENT's adaptive gradient correction) as a training algorithm: SVRG with an adaptive weight.

As in AGENT's ITOP/RigL code: at every epoch start a full pass over the epoch's examples takes
the mean gradient `mu` at the current weights `w` and the per-batch losses at `w` and at the
previous snapshot `w~`; `tau`, an exponential moving average (rate `agc_ema`) of the
least-squares slope of the losses at `w` on those at `w~`, says how far the two move together.
Then `w~` becomes `w`. Every step corrects the gradient before the optimizer uses it:

    d = g(w) + agc_gamma * tau * (mu - g~(w~))

with `g~` the snapshot's gradient on the same batch (a second forward and backward). Departures
from the code: the full pass leaves the model's batch-norm statistics as they were (the code's
pass trains them an extra epoch), the snapshot copies masks and buffers too, and it runs the
masked dense convs under `--compiled` (same FLOPs, counted).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.errors import MestError
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import require_non_negative, setting

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

# AGENT's initial tau (train() in A-ITOP/main.py).
TAU_INIT = 0.1


@dataclass(frozen=True)
class AGCConfig:
    """Adaptive gradient correction (the `gradient_correction` section); defaults are AGENT's code's."""

    agc: bool = setting(False, "adaptive gradient correction (AGENT): a variance-reduced step with an adaptive weight")
    agc_gamma: float = setting(0.1, "scale of the control variate (AGENT's gamma)")
    agc_ema: float = setting(0.3, "rate of the moving average of the loss slope tau (AGENT's alpha)")

    def __post_init__(self) -> None:
        require_non_negative(self, "agc_gamma")
        if not 0.0 < self.agc_ema <= 1.0:
            raise MestError(f"agc_ema must lie in (0, 1], got {self.agc_ema!r}")


def loss_slope(current: Sequence[float], snapshot: Sequence[float]) -> float:
    """cov(current, snapshot) / var(snapshot) with ddof 1 (AGENT's tau_curr); 1 when undefined."""
    a = torch.tensor(current, dtype=torch.float64)
    b = torch.tensor(snapshot, dtype=torch.float64)
    if a.numel() < 2:
        return 1.0
    var = float(b.var())
    cov = float(((a - a.mean()) * (b - b.mean())).sum() / (a.numel() - 1))
    return cov / var if var > 0 else 1.0


def correct_gradients_(params: Sequence[nn.Parameter], snapshot_grads: Sequence[torch.Tensor | None],
                       mean_grads: Sequence[torch.Tensor | None], weight: float) -> None:
    """`p.grad += weight * (mu - g~)` for every parameter with a gradient and a mean gradient."""
    for param, tilde, mu in zip(params, snapshot_grads, mean_grads):
        if param.grad is not None and tilde is not None and mu is not None:
            param.grad.add_(mu - tilde, alpha=weight)


class AGC(TrainingAlgorithm):
    """The snapshot, the mean gradient and tau; corrects each step's gradients (module docstring)."""

    def __init__(self, config: AGCConfig) -> None:
        self.config = config
        self.tau = TAU_INIT
        self.snapshot: nn.Module | None = None
        self.mean_grads: list[torch.Tensor | None] = []
        self._index: torch.Tensor | None = None

    def setup(self, trainer: Trainer) -> None:
        """The snapshot starts as a copy of the model (so the first tau estimate is 1, as in A-ITOP)."""
        if trainer.config.run.engine != "torch":
            raise MestError("--agc trains with --engine torch (the compiled whole step has no snapshot model)")
        self.snapshot = copy.deepcopy(trainer.model)

    def _snapshot(self) -> nn.Module:
        if self.snapshot is None:
            raise MestError("the AGC algorithm was used before setup(trainer)")
        return self.snapshot

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """The full pass: mean gradient at w, losses at w and w~, tau; then w~ <- w."""
        model, snapshot = trainer.model, self._snapshot()
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        model.train()
        snapshot.train()
        for param in model.parameters():
            param.grad = None
        current, previous = [], []
        batches = trainer.active.split(trainer.config.optim.batch_size)
        for index in batches:
            x, y = trainer.data.train_x[index], trainer.data.train_y[index]
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            current.append(float(loss.detach()))
            _follow_modes(snapshot, model)
            with torch.no_grad():
                previous.append(float(F.cross_entropy(snapshot(x), y)))
        self.mean_grads = [p.grad / len(batches) if p.grad is not None else None for p in model.parameters()]
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for param in model.parameters():
            param.grad = None
        slope = loss_slope(current, previous)
        self.tau = (1.0 - self.config.agc_ema) * self.tau + self.config.agc_ema * slope
        snapshot.load_state_dict(model.state_dict())
        for tilde, param in zip(snapshot.parameters(), model.parameters()):
            tilde.requires_grad_(param.requires_grad)
        return {"agc_tau": self.tau}

    def before_step(self, trainer: Trainer, step: int, batch_index: torch.Tensor) -> None:
        """Keep the step's examples: the snapshot's gradient is taken on the same batch."""
        self._index = batch_index

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """The snapshot's gradient on the step's batch, then the corrected gradient in `p.grad`."""
        snapshot = self._snapshot()
        assert self._index is not None
        _follow_modes(snapshot, trainer.model)
        snapshot.zero_grad(set_to_none=True)
        x, y = trainer.data.train_x[self._index], trainer.data.train_y[self._index]
        F.cross_entropy(snapshot(x), y).backward()
        correct_gradients_(list(trainer.model.parameters()), [p.grad for p in snapshot.parameters()],
                           self.mean_grads, self.config.agc_gamma * self.tau)

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """The final tau."""
        return {"agc_tau": self.tau}

    def state_dict(self) -> dict[str, Any]:
        """tau and the snapshot (the mean gradient is taken again at the next epoch start)."""
        return {"tau": self.tau, "snapshot": self._snapshot().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore them."""
        self.tau = float(state["tau"])
        self._snapshot().load_state_dict(state["snapshot"])


def _follow_modes(snapshot: nn.Module, model: nn.Module) -> None:
    # The modes of the model's last forward (frozen batch norms run in eval mode) hold for the snapshot.
    for tilde, module in zip(snapshot.modules(), model.modules()):
        tilde.training = module.training


def _enabled(config: AGCConfig) -> bool:
    return config.agc


ALGORITHMS.add("agc", AlgorithmSpec(
    section="gradient_correction", config=AGCConfig, factory=AGC, enabled=_enabled,
    record_defaults={"agc_tau": None}, summary_defaults={"agc_tau": None},
))
