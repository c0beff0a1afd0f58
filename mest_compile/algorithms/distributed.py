"""Data-parallel training across processes and machines (torch.distributed), as a training algorithm.

Enabled when a launcher such as `torchrun` sets `WORLD_SIZE` above 1. Every rank holds the whole
dataset and draws the same batch order (same seed); each trains on its contiguous part of every
batch (`shard_batch`, a distributed sampler over the one permutation), so N ranks with B/N
examples each see exactly the single-process batch B. After the backward, the gradients are
averaged in one flat all-reduce weighted by each rank's share of the batch: the mean loss over
the whole batch, as one process computes it (`PackedGradients`; sparse layers send only their
kept values). The step's logits and loss are gathered, so forgetting statistics, data removal
and the metrics are the whole batch's on every rank, and so decide alike.

Masks stay identical because every rank mutates from the same weights, gradients and growth
generator; after every mask update and every epoch the ranks compare a fingerprint of their
masks and kept examples, and stop with one line if they differ. BatchNorm normalises each rank's
part with its own statistics (as DDP without SyncBatchNorm), or with `--sync-bn` the whole
batch's (`SyncBatchNorm2d`, on CPUs too); the running statistics are rank 0's, broadcast after
every epoch. Rank 0
alone writes checkpoints, metrics, plots and progress. A failed collective (a rank died, or
hung past `--dist-timeout`) becomes one line naming the lost rank.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mest_compile.algorithms.lost_ranks import collective
from mest_compile.algorithms.packed_grads import PackedGradients
from mest_compile.algorithms.sync_batchnorm import convert_sync_batchnorm_
from mest_compile.errors import MestError, first_line
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm
from mest_compile.train.sections import setting

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistributedConfig:
    """How the ranks of a data-parallel run talk (the `distributed` section; used when WORLD_SIZE > 1)."""

    # auto: nccl when the model trains on a GPU, gloo on CPUs.
    dist_backend: str = setting("auto", "torch.distributed backend of a torchrun launch: auto, gloo or nccl")
    # Long enough for a slow epoch's evaluation on a shared machine, short enough to notice a hung rank.
    dist_timeout: float = setting(120.0, "seconds a rank waits for the others before the run stops "
                                         "(a rank died or hung)")
    # On: the point of sparse training's communication; off measures what dense DDP would send.
    packed_grads: bool = setting(True, "all-reduce only the kept values' gradients of sparse layers "
                                       "(off: every gradient dense)")
    # Off as in DDP: two small all-reduces per BatchNorm layer and step, for equality with one process.
    sync_bn: bool = setting(False, "BatchNorm statistics over the whole batch across ranks (as one process); "
                                   "off: each rank's part")

    def __post_init__(self) -> None:
        if self.dist_backend not in BACKENDS:
            raise MestError(f"dist_backend must be one of {', '.join(BACKENDS)}, got {self.dist_backend!r}")
        if not self.dist_timeout > 0:
            raise MestError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout!r}")


def world_size() -> int:
    """The number of ranks the launcher started (1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MestError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def _cores_per_rank() -> int:
    # The ranks on one machine share its cores (torchrun sets LOCAL_WORLD_SIZE).
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local))


class DataParallel(TrainingAlgorithm):
    """One rank of a data-parallel run (see the module docstring)."""

    def __init__(self, config: DistributedConfig) -> None:
        self.config = config
        self.cores = _cores_per_rank()
        # Before the compiled kernels' module is imported (an algorithm registered later): it
        # sizes TVM's thread pool from this variable then. A user's setting wins.
        os.environ.setdefault("TVM_NUM_THREADS", str(self.cores))
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = world_size()
        if torch.cuda.is_available():
            # One GPU per rank of a machine: what "cuda" means from here on (nccl, to_device).
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        self.device = torch.device("cpu")
        self.grads: PackedGradients | None = None
        self.part = (0, 0)  # this rank's examples and the batch's, of the current step
        self.epoch = 0  # for the messages
        self.steps = 0
        self.checks = 0
        self.fingerprints: list[int] = []
        self.owns_group = False

    # --- set-up ---
    def setup(self, trainer: Trainer) -> None:
        """Divide the machine's cores between its ranks (unless --threads says otherwise); with
        --sync-bn, BatchNorm normalises over the whole batch."""
        if trainer.config.run.threads is None:
            torch.set_num_threads(self.cores)
        if self.config.sync_bn:
            convert_sync_batchnorm_(trainer.model)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Join the process group, start from rank 0's weights, plan the packed gradients."""
        if not trainer.engine.data_parallel:
            raise MestError(f"--engine {trainer.engine.name} updates the weights inside one compiled step and "
                            "cannot train data-parallel; use --engine torch with torchrun")
        self.device = next(trainer.model.parameters()).device
        if not dist.is_initialized():
            backend = self.config.dist_backend
            if backend == "auto":
                backend = "nccl" if self.device.type == "cuda" else "gloo"
            try:
                dist.init_process_group(backend, timeout=timedelta(seconds=self.config.dist_timeout))
            except (RuntimeError, ValueError) as exc:
                raise MestError(f"rank {self.rank} could not join the {backend} process group of {self.world} "
                                f"ranks: {first_line(exc)[:200]}") from None
            self.owns_group = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._broadcast_(self._floats(trainer, params=True), "the start's weight broadcast")
        self.grads = PackedGradients(trainer.model, trainer.layers, packed=self.config.packed_grads)
        self._check_agreement(trainer, "the start of training")

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Leave the process group (when this algorithm joined it)."""
        if self.owns_group:
            collective("the final barrier", dist.barrier)
            dist.destroy_process_group()
            self.owns_group = False

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any] | None:
        """Remember the epoch, for the messages."""
        self.epoch = epoch
        return None

    def writes_outputs(self, trainer: Trainer) -> bool:
        """Rank 0 writes checkpoints, metrics, plots and progress."""
        return self.rank == 0

    # --- the step ---
    def shard_batch(self, trainer: Trainer, size: int) -> slice:
        """This rank's contiguous part of the batch; parts differ by at most one example."""
        share, extra = divmod(size, self.world)
        if share == 0:
            raise MestError(f"a batch of {size} examples cannot be split across {self.world} ranks; choose a "
                            "--batch-size whose last batch holds at least one example per rank")
        start = self.rank * share + min(self.rank, extra)
        count = share + (self.rank < extra)
        self.part = (count, size)
        return slice(start, start + count)

    def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
        """Average the gradients over the whole batch (before any algorithm reads them)."""
        count, size = self.part
        grads = self._grads()
        collective(f"the gradient all-reduce of epoch {self.epoch} step {step}",
                         lambda: grads.reduce_(count / size, dist.all_reduce))
        self.steps += 1

    def gather_outputs(self, trainer: Trainer, loss: float, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The whole batch's logits (in batch order) and mean loss, from every rank's part."""
        count, size = self.part
        classes = logits.shape[1]
        longest = -(-size // self.world)
        # float64: the loss sum stays exact enough and float32 logits round-trip unchanged.
        mine = torch.zeros(longest * classes + 1, dtype=torch.float64, device=logits.device)
        mine[:count * classes] = logits.reshape(-1)
        mine[-1] = loss * count
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        collective("the step's output gather", lambda: dist.all_gather(parts, mine))
        share, extra = divmod(size, self.world)
        counts = [share + (r < extra) for r in range(self.world)]
        gathered = torch.cat([part[:n * classes].view(n, classes) for part, n in zip(parts, counts)])
        total = float(sum(part[-1] for part in parts))
        return total / size, gathered.to(logits.dtype)

    # --- agreement ---
    def on_mask_update(self, trainer: Trainer, epoch: int, layers: tuple[str, ...]) -> None:
        """The ranks compare their masks after every update; the packed positions follow the masks."""
        self._check_agreement(trainer, f"the mask update at epoch {epoch}")
        self._grads().replan()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Rank 0's running statistics everywhere; the ranks compare masks and kept examples (data
        removal decides on every rank)."""
        # Once an epoch, not after every step as DDP: training normalises with batch statistics,
        # so the running ones matter only to evaluation (rank 0's is the one recorded) and checkpoints.
        self._broadcast_(self._floats(trainer, params=False), "the running statistics' broadcast")
        self._check_agreement(trainer, f"epoch {record['epoch']}")

    def _check_agreement(self, trainer: Trainer, when: str) -> None:
        mine = torch.tensor([_fingerprint(trainer)], dtype=torch.int64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        collective(f"the mask check after {when}", lambda: dist.all_gather(every, mine))
        self.fingerprints = [int(t) for t in every]
        self.checks += 1
        differing = [rank for rank, value in enumerate(self.fingerprints) if value != self.fingerprints[0]]
        if differing:
            raise MestError(f"masks or kept examples differ between ranks after {when}: rank {differing[0]} "
                            f"disagrees with rank 0 (fingerprints {self.fingerprints}); the ranks must decide alike")

    # --- reporting ---
    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """Ranks, backend, the bytes reduced per step (packed and what dense DDP would send), checks."""
        grads = self._grads()
        return {"distributed": {
            "world_size": self.world,
            "backend": dist.get_backend() if dist.is_initialized() else self.config.dist_backend,
            "packed_grads": self.config.packed_grads,
            "steps": self.steps,
            "reduced_bytes_per_step": grads.packed_bytes,
            "dense_bytes_per_step": grads.dense_bytes,
            "mask_checks": self.checks,
            "mask_fingerprints": self.fingerprints,
        }}

    # --- helpers ---
    def _grads(self) -> PackedGradients:
        if self.grads is None:
            raise MestError("the data-parallel algorithm was used before on_fit_start")
        return self.grads

    def _floats(self, trainer: Trainer, *, params: bool) -> list[torch.Tensor]:
        tensors = trainer.model.parameters() if params else trainer.model.buffers()
        return [t for t in tensors if t.is_floating_point()]

    @torch.no_grad()
    def _broadcast_(self, tensors: list[torch.Tensor], what: str) -> None:
        """Rank 0's values of `tensors` on every rank, in one flat broadcast."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        collective(what, lambda: dist.broadcast(flat, src=0))
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()



def _fingerprint(trainer: Trainer) -> int:
    """A 64-bit digest of every mask and of the examples still trained on."""
    digest = hashlib.sha256()
    for name, layer in trainer.layers.items():
        digest.update(name.encode())
        digest.update(layer.mask.detach().cpu().numpy().tobytes())
    digest.update(trainer.active.cpu().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little", signed=True)


def _enabled(config: DistributedConfig) -> bool:
    return world_size() > 1


ALGORITHMS.add("distributed", AlgorithmSpec(
    section="distributed", config=DistributedConfig, factory=DataParallel, enabled=_enabled,
    summary_defaults={"distributed": None},
))
