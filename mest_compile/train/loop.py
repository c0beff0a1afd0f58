"""The MEST training loop: mutation at epoch starts, masked steps, data removal, checkpoints."""

from __future__ import annotations

import contextlib
import sys
import dataclasses
import pathlib
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.data_efficiency import (ForgettingTracker, example_statistics, read_importance, removal,
                                                   write_importance)
from mest_compile.sparsity.module import SparseConv2d, sparsify
from mest_compile.sparsity.mutation import ElasticMutation, MutationConfig
from mest_compile.sparsity.profile import looks_like_mest_kernel_space
from mest_compile.train import checkpoint, report
from mest_compile.train.augment import augment_batch
from mest_compile.train.config import TrainConfig
from mest_compile.train.datasets import load_dataset
from mest_compile.train.models import build_model
from mest_compile.train.optim import OPTIMIZERS, SCHEDULERS
from mest_compile.train.profiles import resolve_profile, resolve_schedule


class Trainer:
    """One MEST training run in a run directory.

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
        state = _state
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)

        self.data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
        self.model = build_model(config.model, num_classes=self.data.num_classes, in_channels=self.data.in_channels)
        self.compat = Compat.from_names(config.compat)
        profile = resolve_profile(config, self.model)
        if "pattern" in config.scheme and profile.ratio_space == "overall" and looks_like_mest_kernel_space(profile):
            warnings.warn("the profile's ratios look like MEST's pattern kernel-level values (0.775 means 90%); "
                          "pass --ratio-space kernel if that is what they are", stacklevel=2)
        self.layers: dict[str, SparseConv2d] = sparsify(self.model, config.scheme, profile, compat=self.compat)
        self.optimizer = OPTIMIZERS.get(config.optimizer)(self.model.parameters(), config.lr, config.momentum,
                                                          config.weight_decay)
        self.scheduler = SCHEDULERS.get(config.lr_scheduler)(self.optimizer, config.epochs)
        self.mutation = ElasticMutation(self.layers, MutationConfig(
            schedule=resolve_schedule(config),
            score="magnitude+grad" if config.sp_lmd > 0 else "magnitude",
            sp_lmd=config.sp_lmd,
            regrow_momentum=config.regrow_momentum,
            compat=self.compat,
            seed=config.seed,
        ), optimizer=self.optimizer)
        self.kernels: dict[str, dict[str, Any]] = {}
        if config.compiled:
            from mest_compile.compiler.api import compile_model  # the compiler side loads only when asked
            from mest_compile.compiler.tune.records import use_records

            use_records(config.work_dir)
            self.kernels = compile_model(self.model, config.target, example_input=self.data.train_x[: config.batch_size],
                                         fallback=config.fallback)
        self.forgetting = ForgettingTracker(len(self.data.train_y))
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.active = torch.arange(len(self.data.train_y))
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        if state is not None:
            self._restore(state)

    @classmethod
    def resume(cls, run_dir: str | pathlib.Path, *, epochs: int | None = None, progress: bool = False) -> "Trainer":
        """Continue the run in `run_dir` from its checkpoint; `epochs` may extend it."""
        ckpt_file = checkpoint.checkpoint_path(run_dir)
        state = checkpoint.load_checkpoint(ckpt_file)
        config = TrainConfig.from_dict(state["config"], source=str(ckpt_file))
        if epochs is not None:
            # Only the length of the run may change on resume; anything else would not continue it.
            config = dataclasses.replace(config, epochs=epochs)
        return cls(config, run_dir, progress=progress, _state=state)

    # --- state ---
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue after `epoch` exactly as an uninterrupted run would."""
        return {
            "epoch": epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "mutation": self.mutation.state_dict(),
            "forgetting": self.forgetting.state_dict(),
            "active": self.active.clone(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state()},
            "history": self.history,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.mutation.load_state_dict(state["mutation"])
            self.forgetting.load_state_dict(state["forgetting"])
            self.active = state["active"].clone()
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
        report.rewrite_metrics(self.run_dir, self.history)
        end = self.config.epochs if stop_after is None else min(self.config.epochs, self.start_epoch + stop_after)
        for epoch in range(self.start_epoch, end):
            record = self.run_epoch(epoch)
            if self.progress:
                _echo_epoch(record, self.config.epochs)
            self.history.append(record)
            report.append_metrics(self.run_dir, record)
            checkpoint.save_checkpoint(checkpoint.checkpoint_path(self.run_dir), self.state_dict(epoch))
            self.start_epoch = epoch + 1
        summary = self.summary()
        report.write_summary(self.run_dir, summary)
        if self.history:
            report.plot_history(self.run_dir, self.history)
        return summary

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Mutation (MEST's prune_update), data removal, one training epoch, evaluation."""
        start = time.perf_counter()
        mutation = self.mutation.step(epoch)
        removed = self._maybe_remove_data(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = self._train_epoch(epoch)
        test_loss, test_acc = self.evaluate()
        self.scheduler.step()
        return {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "sparsity": self.sparsity(),
            "model_sparsity": self.model_sparsity(),
            "n_train": int(self.active.numel()),
            "removed": removed,
            "mutation": mutation.to_dict() if mutation is not None else None,
            "seconds": time.perf_counter() - start,
        }

    def _batches(self) -> list[torch.Tensor]:
        # MEST builds batches from a permutation of the active examples; the last may be partial.
        order = self.active[torch.randperm(self.active.numel(), generator=self.data_rng)]
        return list(order.split(self.config.batch_size))

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        batches = self._batches()
        total_loss, total_correct, seen = 0.0, 0, 0
        with self._progress(batches, f"epoch {epoch + 1}/{self.config.epochs}") as bar:
            for step, index in enumerate(bar):
                x = self.data.train_x[index]
                if self.data.augment:
                    x = augment_batch(x, self.data_rng, fill=self.data.pad_fill)
                y = self.data.train_y[index]
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step == len(batches) - 1:
                    self.mutation.observe_gradients()
                self.optimizer.step()
                self.mutation.apply_masks_()
                # Recorded on the batch the step trained on, before the update, as MEST does.
                correct, losses, margins = example_statistics(logits, y)
                if self.config.data_efficient:
                    self.forgetting.record(index, correct, losses, margins)
                total_loss += loss.item() * len(y)
                total_correct += int(correct.sum())
                seen += len(y)
        return total_loss / seen, total_correct / seen

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy on the test split."""
        self.model.eval()
        total_loss, correct = 0.0, 0
        for x, y in zip(self.data.test_x.split(self.config.test_batch_size),
                        self.data.test_y.split(self.config.test_batch_size)):
            logits = self.model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        n = len(self.data.test_y)
        return total_loss / n, correct / n

    def _maybe_remove_data(self, epoch: int) -> int:
        """Remove the least-forgotten examples once, at the start of `remove_data_epoch`."""
        cfg = self.config
        if cfg.remove_data_epoch is None or epoch != cfg.remove_data_epoch or cfg.remove_n == 0:
            return 0
        if cfg.sorting_file is not None:
            ordered = read_importance(cfg.sorting_file).indices
            if int(ordered.max()) >= len(self.data.train_y):
                raise MestError(f"importance file {cfg.sorting_file!r} names example {int(ordered.max())}, "
                                f"but the training set has {len(self.data.train_y)}")
        else:
            npresentations = cfg.epochs if self.compat.npresentations_from_epochs else None
            ordered, counts, zeros = self.forgetting.sorted_by_forgetting(npresentations=npresentations)
            write_importance(self.run_dir, ordered, counts, name=cfg.output_name)
        drop = removal(ordered, cfg.keep_lowest_n, cfg.remove_n)
        keep = torch.ones(len(self.data.train_y), dtype=torch.bool)
        keep[torch.as_tensor(drop, dtype=torch.long)] = False
        before = self.active.numel()
        self.active = self.active[keep[self.active]]
        self.forgetting.reset()
        return int(before - self.active.numel())

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
        """Final numbers of the run (also written as summary.json)."""
        accs = [r["test_acc"] for r in self.history]
        return {
            "scheme": self.config.scheme,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "epochs": self.config.epochs,
            "final_test_acc": accs[-1] if accs else float("nan"),
            "best_test_acc": max(accs) if accs else float("nan"),
            "sparsity": self.sparsity(),
            "model_sparsity": self.model_sparsity(),
            "mask_updates": self.mutation.updates,
            "n_train": int(self.active.numel()),
            "compat": list(self.compat.enabled()),
            "kernels": self.kernel_summary(),
            "layers": [
                {"name": name, "shape": list(layer.weight.shape), "nnz": int(layer.mask.sum()),
                 "sparsity": layer.sparsity}
                for name, layer in self.layers.items()
            ],
        }

    def kernel_summary(self) -> dict[str, Any] | None:
        """Compiled-kernel status per layer and what the builds and backends did (None: not compiled)."""
        if not self.config.compiled:
            return None
        from mest_compile.compiler.build import STATS

        layers = {}
        totals = {"packs": 0, "repacks": 0, "rebuilds": 0, "overflows": 0, "dense_calls": 0}
        for name, layer in self.layers.items():
            entry = dict(self.kernels.get(name, {}))
            stats_of = getattr(layer.backend, "stats", None)
            if stats_of is not None:
                stats = stats_of.to_dict()
                entry["backend"] = stats
                for key in totals:
                    totals[key] += stats[key]
            layers[name] = entry
        return {"target": self.config.target, "builds": STATS.to_dict(), **totals, "layers": layers}

    @contextlib.contextmanager
    def _progress(self, batches: list[torch.Tensor], label: str) -> Iterator[Any]:
        import click

        stderr = sys.stderr
        if not self.progress or not stderr.isatty():  # a log file gets the epoch lines only
            yield batches
            return
        with click.progressbar(batches, label=label, file=stderr) as bar:
            yield bar


def _echo_epoch(record: dict[str, Any], epochs: int) -> None:
    import click

    mutation = record["mutation"]
    mutated = f"  mutation: stage {mutation['stage']} prune to {mutation['lower']} grow to {mutation['upper']}" if mutation else ""
    removed = f"  removed {record['removed']} examples" if record["removed"] else ""
    click.echo(f"epoch {record['epoch'] + 1}/{epochs}  loss {record['train_loss']:.4f}  train {100 * record['train_acc']:.2f}%"
               f"  test {100 * record['test_acc']:.2f}%  sparsity {100 * record['sparsity']:.2f}%"
               f"  {record['seconds']:.1f}s{mutated}{removed}", err=True)
