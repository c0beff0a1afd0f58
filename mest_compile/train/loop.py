"""The training loop: batches, masked steps, evaluation, checkpoints; training algorithms on its events.

What MEST adds to plain training (Elastic Mutation, data efficiency, compiled kernels) are
`TrainingAlgorithm`s, built from the config's sections and called on the events listed in
`mest_compile.train.events`; the loop itself names none of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from mest_compile.algorithms import build_algorithms, record_defaults, summary_defaults
from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.module import SparseConv2d, sparsify
from mest_compile.sparsity.profile import looks_like_mest_kernel_space
from mest_compile.train import checkpoint, report
from mest_compile.train.augment import augment_batch
from mest_compile.train.config import TrainConfig
from mest_compile.train.datasets import load_dataset
from mest_compile.train.engine import StepEngine, build_engine
from mest_compile.train.events import TrainingAlgorithm
from mest_compile.train.models import build_model
from mest_compile.train.optim import OPTIMIZERS, SCHEDULERS
from mest_compile.train.profiles import resolve_profile


class Trainer:
    """One training run in a run directory, with the training algorithms its config enables.

    Example:
        >>> trainer = Trainer(TrainConfig(epochs=2), pathlib.Path("runs/x"))  # doctest: +SKIP
        >>> summary = trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, run_dir: str | pathlib.Path, *, progress: bool = False,
                 _state: dict[str, Any] | None = None) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.progress = progress
        if _state is None and checkpoint.checkpoint_path(self.run_dir).exists():
            raise MestError(f"{str(self.run_dir)!r} already holds a checkpoint; pass --resume to continue it "
                            "or choose another --out")
        self.config = config
        data, sparse, optim, run = config.data, config.sparse, config.optim, config.run
        if run.threads is not None:
            torch.set_num_threads(run.threads)
        # Model initialisation draws on the global generator: seeded here, once per run.
        torch.manual_seed(run.seed)

        self.data = load_dataset(data.dataset, data.data_dir, seed=run.seed)
        self.model = build_model(data.model, num_classes=self.data.num_classes, in_channels=self.data.in_channels)
        self.compat = Compat.from_names(run.compat)
        profile = resolve_profile(config, self.model)
        if "pattern" in sparse.scheme and profile.ratio_space == "overall" and looks_like_mest_kernel_space(profile):
            warnings.warn("the profile's ratios look like MEST's pattern kernel-level values (0.775 means 90%); "
                          "pass --ratio-space kernel if that is what they are", stacklevel=2)
        self.layers: dict[str, SparseConv2d] = sparsify(self.model, sparse.scheme, profile, compat=self.compat)
        self.optimizer = OPTIMIZERS.get(optim.optimizer)(self.model.parameters(), optim.lr, optim.momentum,
                                                         optim.weight_decay)
        self.scheduler = SCHEDULERS.get(optim.lr_scheduler)(self.optimizer, optim.epochs)
        self.algorithms: dict[str, TrainingAlgorithm] = build_algorithms(config)
        for algorithm in self.algorithms.values():
            algorithm.setup(self)
        self.engine: StepEngine = build_engine(run.engine)
        self.engine.setup(self)
        # Batches and augmentation draw only on this generator, so they repeat on resume.
        self.data_rng = torch.Generator().manual_seed(run.seed)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        if _state is not None:
            self._restore(_state)

    @classmethod
    def resume(cls, run_dir: str | pathlib.Path, *, epochs: int | None = None, progress: bool = False) -> Trainer:
        """Continue the run in `run_dir` from its checkpoint; `epochs` may extend it."""
        ckpt_file = checkpoint.checkpoint_path(run_dir)
        state = checkpoint.load_checkpoint(ckpt_file)
        config = TrainConfig.from_dict(state["config"], source=str(ckpt_file))
        if epochs is not None:
            # Only the length of the run may change on resume; anything else would not continue it.
            config = dataclasses.replace(config, epochs=epochs)
        return cls(config, run_dir, progress=progress, _state=state)

    # --- events ---
    def emit(self, event: str, *args: Any) -> None:
        """Call `event` on every enabled algorithm, in registration order."""
        for algorithm in self.algorithms.values():
            getattr(algorithm, event)(self, *args)

    def masks_updated(self, epoch: int, layers: tuple[str, ...]) -> None:
        """Called by an algorithm that changed the masks of `layers`: every algorithm hears of it."""
        self.emit("on_mask_update", epoch, layers)

    def training_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step's loss on its forward output: cross-entropy of the logits the algorithms pass on."""
        for algorithm in self.algorithms.values():
            logits = algorithm.training_logits(self, logits)
        return F.cross_entropy(logits, y)

    @property
    def active(self) -> torch.Tensor:
        """Dataset indices of the examples still trained on (the algorithms may remove some)."""
        active = torch.arange(len(self.data.train_y))
        for algorithm in self.algorithms.values():
            active = algorithm.select_examples(self, active)
        return active

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files and progress (every algorithm agrees)."""
        return all(algorithm.writes_outputs(self) for algorithm in self.algorithms.values())

    def shard(self, size: int) -> slice:
        """The part of a batch of `size` examples this process trains on (all of it unless an
        algorithm splits batches across processes)."""
        parts = [(name, part) for name, algorithm in self.algorithms.items()
                 if (part := algorithm.shard_batch(self, size)) is not None]
        if len(parts) > 1:
            raise MestError(f"training algorithms {parts[0][0]!r} and {parts[1][0]!r} both split the batch; "
                            "enable one of them")
        return parts[0][1] if parts else slice(None)

    def to_device(self, device: torch.device | str) -> None:
        """Train on `device`: the model (weights, masks) and the data splits move there. The
        optimizer keeps working (parameters move in place) and checkpoints load on any machine."""
        self.model.to(device)
        self.data = self.data.to(device)

    # --- state ---
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue after `epoch` exactly as an uninterrupted run would."""
        return {
            "epoch": epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithms": {name: algorithm.on_checkpoint_save(self) for name, algorithm in self.algorithms.items()},
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state()},
            "history": self.history,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            saved = state["algorithms"]
            for name, algorithm in self.algorithms.items():
                if name in saved:
                    algorithm.on_checkpoint_load(self, saved[name])
                elif algorithm.state_dict():
                    raise MestError(f"checkpoint holds no state of the training algorithm {name!r} this run uses")
            torch.set_rng_state(state["rng"]["torch"])
            self.data_rng.set_state(state["rng"]["data"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise MestError(f"checkpoint does not match this run's model or settings: {str(exc).splitlines()[0]}") from None
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"]) + 1

    # --- the loop ---
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train from the current epoch to `config.epochs` and return the summary.

        Args:
            stop_after: stop after this many epochs of this call (the run stays resumable), as if
                the process had been interrupted.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.emit("on_fit_start")
        writer = self.writer
        if writer:
            report.rewrite_metrics(self.run_dir, self.history)
        epochs = self.config.optim.epochs
        end = epochs if stop_after is None else min(epochs, self.start_epoch + stop_after)
        for epoch in range(self.start_epoch, end):
            record = self.run_epoch(epoch)
            if self.progress and writer:
                _echo_epoch(record, epochs)
            self.history.append(record)
            state = self.state_dict(epoch)  # every process: algorithms may gather state for it
            if writer:
                report.append_metrics(self.run_dir, record)
                checkpoint.save_checkpoint(checkpoint.checkpoint_path(self.run_dir), state)
            self.start_epoch = epoch + 1
        summary = self.summary()
        if writer:
            report.write_summary(self.run_dir, summary)
            if self.history:
                report.plot_history(self.run_dir, self.history)
        self.emit("on_fit_end", summary)
        return summary

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """The algorithms' epoch start (mutation, data removal), one training epoch, evaluation."""
        start = time.perf_counter()
        fields = record_defaults()
        for algorithm in self.algorithms.values():
            fields.update(algorithm.on_epoch_start(self, epoch) or {})
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = self._train_epoch(epoch)
        test_loss, test_acc = self.evaluate()
        self.scheduler.step()
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "sparsity": self.sparsity(),
            "model_sparsity": self.model_sparsity(),
            "n_train": int(self.active.numel()),
            **fields,
            "seconds": time.perf_counter() - start,
        }
        self.emit("on_epoch_end", record)
        return record

    def _batches(self) -> list[torch.Tensor]:
        # MEST builds batches from a permutation of the active examples; the last may be partial.
        active = self.active
        order = active[torch.randperm(active.numel(), generator=self.data_rng)]
        return list(order.split(self.config.optim.batch_size))

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        batches = self._batches()
        total_loss, total_correct, seen = 0.0, 0, 0
        self.engine.begin_epoch(self)
        with self._progress(batches, f"epoch {epoch + 1}/{self.config.optim.epochs}") as bar:
            for step, index in enumerate(bar):
                self.emit("before_step", step, index)
                x = self.data.train_x[index]
                if self.data.augment:  # the whole batch: the draws repeat however the batch is split
                    x = augment_batch(x, self.data_rng, fill=self.data.pad_fill)
                y = self.data.train_y[index]
                part = self.shard(len(index))
                loss, logits = self.engine.step(self, x[part], y[part], step, step == len(batches) - 1)
                for algorithm in self.algorithms.values():
                    loss, logits = algorithm.gather_outputs(self, loss, logits)
                self.emit("after_step", step, logits, y, index)
                total_loss += loss * len(y)
                total_correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
        self.engine.end_epoch(self)
        return total_loss / seen, total_correct / seen

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy on the test split."""
        self.model.eval()
        total_loss, correct = 0.0, 0
        batch = self.config.optim.test_batch_size
        for x, y in zip(self.data.test_x.split(batch), self.data.test_y.split(batch)):
            logits = self.model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        n = len(self.data.test_y)
        return total_loss / n, correct / n

    # --- reporting ---
    def sparsity(self) -> float:
        """Fraction of zero weights over the sparse layers (masks)."""
        total = sum(layer.mask.numel() for layer in self.layers.values())
        kept = sum(int(layer.mask.sum()) for layer in self.layers.values())
        return 1.0 - kept / total if total else 0.0

    def model_sparsity(self) -> float:
        """Fraction of zero weights over every conv and linear weight (MEST's `test_sparsity`)."""
        weights = [p for name, p in self.model.named_parameters() if p.dim() in (2, 4) and name.endswith("weight")]
        total = sum(p.numel() for p in weights)
        return sum(int((p == 0).sum()) for p in weights) / total

    def summary(self) -> dict[str, Any]:
        """Final numbers of the run (also written as summary.json), the algorithms' fields included."""
        accs = [r["test_acc"] for r in self.history]
        out = {
            "scheme": self.config.sparse.scheme,
            "model": self.config.data.model,
            "dataset": self.config.data.dataset,
            "epochs": self.config.optim.epochs,
            "final_test_acc": accs[-1] if accs else float("nan"),
            "best_test_acc": max(accs) if accs else float("nan"),
            "sparsity": self.sparsity(),
            "model_sparsity": self.model_sparsity(),
            "n_train": int(self.active.numel()),
            "compat": list(self.compat.enabled()),
            **summary_defaults(),
            "engine": self.engine.summary(self),
            "layers": [
                {"name": name, "shape": list(layer.weight.shape), "nnz": int(layer.mask.sum()),
                 "sparsity": layer.sparsity}
                for name, layer in self.layers.items()
            ],
        }
        for algorithm in self.algorithms.values():
            out.update(algorithm.summary(self))
        return out

    @contextlib.contextmanager
    def _progress(self, batches: list[torch.Tensor], label: str) -> Iterator[Any]:
        import click

        stderr = sys.stderr
        if not self.progress or not self.writer or not stderr.isatty():  # a log file gets the epoch lines only
            yield batches
            return
        with click.progressbar(batches, label=label, file=stderr) as bar:
            yield bar


def _echo_epoch(record: dict[str, Any], epochs: int) -> None:
    import click

    mutation = record.get("mutation")
    mutated = f"  mutation: stage {mutation['stage']} prune to {mutation['lower']} grow to {mutation['upper']}" if mutation else ""
    removed = f"  removed {record['removed']} examples" if record.get("removed") else ""
    flops = record.get("training_flops", 0)
    dense = record.get("dense_equivalent_flops", 0)
    counted = f"  {flops:.3g} FLOPs ({100 * flops / dense:.0f}% of dense)" if dense else ""
    click.echo(f"epoch {record['epoch'] + 1}/{epochs}  loss {record['train_loss']:.4f}  train {100 * record['train_acc']:.2f}%"
               f"  test {100 * record['test_acc']:.2f}%  sparsity {100 * record['sparsity']:.2f}%"
               f"  {record['seconds']:.1f}s{counted}{mutated}{removed}", err=True)
