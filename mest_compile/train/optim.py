"""Optimizers and learning-rate schedules, registered by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from mest_compile.registry import Registry

Params = Iterable[torch.nn.Parameter]
OptimizerFactory = Callable[[Params, float, float, float], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULERS: Registry[SchedulerFactory] = Registry("lr scheduler")

OPTIMIZERS.add("sgd", lambda params, lr, momentum, wd: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd))
OPTIMIZERS.add("adam", lambda params, lr, momentum, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd))

# MEST's `cosine`: annealed once per epoch to 4e-8 over the whole run.
SCHEDULERS.add("cosine", lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=4e-8))
# MEST's `default`: x0.1 at epochs 80 and 120 of 160, i.e. at 1/2 and 3/4 of the run.
SCHEDULERS.add(
    "step",
    lambda opt, epochs: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2, epochs * 3 // 4], gamma=0.1),
    aliases=("default",),
)
SCHEDULERS.add("constant", lambda opt, epochs: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0))
