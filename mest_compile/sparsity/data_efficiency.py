"""MEST's data efficiency: forgetting statistics per training example, and removing examples by them.

A *forgetting event* is a presentation at which an example is misclassified right after a
presentation at which it was classified correctly (Toneva et al. 2019, as MEST uses it). After
some epochs the examples are ordered by how often they were forgotten, and a slice of that
order (by default the least-forgotten ones) is removed from the training set.

Corrections to the reference (`main_sparse_train_w_data_efficient.py`), see MEST_SPEC 4:
- A never-learned example counts as forgotten once per presentation *actually observed*; the
  reference used `--epochs` (the `npresentations_from_epochs` compat switch: pass
  `npresentations=epochs` to `counts` / `sorted_by_forgetting` to reproduce it).
- Ties are ordered stably, by first presentation (what the reference's dict order intended);
  its default `np.argsort` is not stable, so its tie order was arbitrary. Ordering ties by first
  presentation rather than by index keeps removal from favouring low indices (often one class).
- `removal` slices `[keep_lowest_n : keep_lowest_n + remove_n]` for a loaded order too; the
  reference's `--sorting-file` path sliced `[-1 : -1 + remove_n]` and removed nothing.

The importance pkl format lives in `importance_file.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mest_compile.errors import MestError
from mest_compile.sparsity.importance_file import ForgettingOrder, read_importance, write_importance


def _int_arg(value: object, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise MestError(f"{what} must be an int >= {low}, got {value!r}")
    return int(value)


def example_statistics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example correctness, cross-entropy loss and margin of one batch, detached.

    The margin is `logit[y] - max_{c != y} logit[c]`: positive exactly when the example is
    classified correctly with a unique maximum.

    Returns:
        `(correct bool (B,), loss float (B,), margin float (B,))`.
    """
    logits = logits.detach()
    loss = F.cross_entropy(logits, targets, reduction="none")
    correct = logits.argmax(dim=1) == targets
    true_logit = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return correct, loss, true_logit - others.max(dim=1).values


class ForgettingTracker:
    """Per-example presentation history, keyed by original dataset index.

    Correctness is kept per presentation (a bool matrix that grows with the longest history,
    1 byte per example and presentation), loss and margin as running sums. Record after the
    forward pass of every training step, on the same batch the loss was computed on.

    Example:
        >>> tracker = ForgettingTracker(num_examples=3)
        >>> tracker.record(torch.tensor([0, 1]), torch.tensor([True, True]))
        >>> tracker.record(torch.tensor([1, 0]), torch.tensor([False, True]))
        >>> tracker.counts().tolist()  # example 1 was forgotten, 2 never presented
        [0, 1, -1]
    """

    def __init__(self, num_examples: int) -> None:
        self.num_examples = _int_arg(num_examples, "num_examples", low=1)
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (MEST resets after removing examples)."""
        n = self.num_examples
        self._correct = torch.zeros(n, 8, dtype=torch.bool)
        self._presentations = torch.zeros(n, dtype=torch.int64)
        # Order of first presentation: ties in the forgetting order are broken by it.
        self._first_seen = torch.full((n,), -1, dtype=torch.int64)
        self._next_seen = 0
        self._loss_sum = torch.zeros(n, dtype=torch.float64)
        self._margin_sum = torch.zeros(n, dtype=torch.float64)

    def record(
        self,
        indices: torch.Tensor,
        correct: torch.Tensor,
        loss: torch.Tensor | None = None,
        margin: torch.Tensor | None = None,
    ) -> None:
        """Append one presentation for each example of a batch.

        Args:
            indices: original dataset indices `(B,)`, distinct within the batch.
            correct: bool (or 0/1) `(B,)`, whether each example was classified correctly.
            loss: per-example loss `(B,)`, optional.
            margin: per-example margin `(B,)`, optional.
        """
        idx = torch.as_tensor(indices).detach().to("cpu").reshape(-1)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise MestError(f"example indices must be integers, got {idx.dtype}")
        idx = idx.long()
        ok = torch.as_tensor(correct).detach().to("cpu").reshape(-1)
        if ok.dtype != torch.bool:
            if ok.dtype.is_floating_point or ((ok != 0) & (ok != 1)).any():
                raise MestError(f"correct must be bool or 0/1 integers, got {ok.dtype} values")
            ok = ok.bool()
        for what, t in (("correct", ok), ("loss", loss), ("margin", margin)):
            if t is not None and t.numel() != idx.numel():
                raise MestError(f"{what} has {t.numel()} entries for {idx.numel()} indices")
        if idx.numel() == 0:
            return
        if idx.min() < 0 or idx.max() >= self.num_examples:
            bad = int(idx[(idx < 0) | (idx >= self.num_examples)][0])
            raise MestError(f"example index {bad} outside [0, {self.num_examples})")
        if torch.unique(idx).numel() != idx.numel():
            raise MestError("example indices repeat within one batch; record them in separate calls")

        pos = self._presentations[idx]
        need = int(pos.max()) + 1
        if need > self._correct.shape[1]:
            grown = torch.zeros(self.num_examples, max(need, 2 * self._correct.shape[1]), dtype=torch.bool)
            grown[:, : self._correct.shape[1]] = self._correct
            self._correct = grown
        self._correct[idx, pos] = ok
        self._presentations[idx] = pos + 1
        new = idx[pos == 0]
        self._first_seen[new] = torch.arange(self._next_seen, self._next_seen + new.numel())
        self._next_seen += new.numel()
        if loss is not None:
            self._loss_sum[idx] += torch.as_tensor(loss).detach().to("cpu", torch.float64).reshape(-1)
        if margin is not None:
            self._margin_sum[idx] += torch.as_tensor(margin).detach().to("cpu", torch.float64).reshape(-1)

    def presentations(self) -> torch.Tensor:
        """How many times each example was recorded, int64 `(N,)`."""
        return self._presentations.clone()

    def mean_loss(self) -> torch.Tensor:
        """Mean recorded loss per example, float64 `(N,)`; NaN where never presented."""
        return self._loss_sum / self._presentations

    def mean_margin(self) -> torch.Tensor:
        """Mean recorded margin per example, float64 `(N,)`; NaN where never presented."""
        return self._margin_sum / self._presentations

    def counts(self, npresentations: int | None = None) -> torch.Tensor:
        """Forgetting count per example, int64 `(N,)`; -1 for examples never presented.

        Args:
            npresentations: `None` (default): use each example's whole history, and count a
                never-learned example as forgotten once per presentation it had. An int
                reproduces the reference's `compute_forgetting_statistics(stats, npresentations)`
                followed by `sort_examples_by_forgetting`: only the first `npresentations`
                presentations are looked at, and a never-learned example counts `npresentations`
                (the reference passed `--epochs`).
        """
        seen = self._presentations > 0
        if npresentations is None:
            limit = self._presentations
        else:
            cap = _int_arg(npresentations, "npresentations", low=1)
            limit = self._presentations.clamp(max=cap)
        width = int(limit.max())
        hist = self._correct[:, :width]
        valid = torch.arange(width) < limit[:, None]
        learned = (hist & valid).any(dim=1)
        # A 1 -> 0 transition between consecutive presentations, both inside the window.
        events = (hist[:, :-1] & ~hist[:, 1:] & valid[:, 1:]).sum(dim=1)
        never = limit if npresentations is None else torch.full_like(limit, cap)
        counts = torch.where(learned, events, never)
        return torch.where(seen, counts, torch.full_like(counts, -1))

    def sorted_by_forgetting(self, npresentations: int | None = None) -> ForgettingOrder:
        """Presented examples ordered by ascending forgetting count.

        Args:
            npresentations: see `counts`.

        Returns:
            `ForgettingOrder(indices, counts, num_zero)`: original indices int64, their counts
            int64 (ascending), and how many examples were never forgotten. Ties keep the order
            of first presentation (a stable sort), so a shuffled first epoch breaks them at
            random but reproducibly.
        """
        counts = self.counts(npresentations)
        seen = torch.nonzero(counts >= 0).squeeze(1)
        by_first = seen[torch.argsort(self._first_seen[seen])]
        order = torch.sort(counts[by_first], stable=True).indices
        indices = by_first[order]
        sorted_counts = counts[indices]
        return ForgettingOrder(indices, sorted_counts, int((sorted_counts == 0).sum()))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors (the history is trimmed to its used width)."""
        width = int(self._presentations.max())
        return {
            "num_examples": self.num_examples,
            "correct": self._correct[:, :width].clone(),
            "presentations": self._presentations.clone(),
            "first_seen": self._first_seen.clone(),
            "next_seen": self._next_seen,
            "loss_sum": self._loss_sum.clone(),
            "margin_sum": self._margin_sum.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; a `MestError` if it does not fit this tracker."""
        expected = {"num_examples", "correct", "presentations", "first_seen", "next_seen", "loss_sum", "margin_sum"}
        if set(state) != expected:
            raise MestError(f"forgetting tracker state has keys {sorted(state)}, expected {sorted(expected)}")
        n = self.num_examples
        if state["num_examples"] != n:
            raise MestError(f"forgetting tracker state is for {state['num_examples']} examples, this tracker has {n}")
        correct = torch.as_tensor(state["correct"], dtype=torch.bool)
        per_example = {
            key: torch.as_tensor(state[key], dtype=dtype).clone()
            for key, dtype in (("presentations", torch.int64), ("first_seen", torch.int64),
                               ("loss_sum", torch.float64), ("margin_sum", torch.float64))
        }
        bad = [k for k, v in per_example.items() if v.shape != (n,)]
        if correct.dim() != 2 or correct.shape[0] != n or bad or int(per_example["presentations"].max()) > correct.shape[1]:
            raise MestError(f"forgetting tracker state has inconsistent shapes: correct {tuple(correct.shape)}, per-example {bad or 'ok'}")
        self._correct = torch.zeros(n, max(8, correct.shape[1]), dtype=torch.bool)
        self._correct[:, : correct.shape[1]] = correct
        self._presentations = per_example["presentations"]
        self._first_seen = per_example["first_seen"]
        self._next_seen = int(state["next_seen"])
        self._loss_sum = per_example["loss_sum"]
        self._margin_sum = per_example["margin_sum"]


def removal(indices_sorted: torch.Tensor | np.ndarray, keep_lowest_n: int, remove_n: int) -> torch.Tensor:
    """The examples to remove: `indices_sorted[keep_lowest_n : keep_lowest_n + remove_n]`.

    With MEST's script values (`keep_lowest_n=0`, `remove_n=12000`) this drops the 12,000
    least-forgotten examples. Used for a freshly computed order and a loaded pkl alike.

    Raises:
        MestError: negative or non-integer arguments, or a slice past the end of the order
            (the reference silently removed fewer).
    """
    order = torch.as_tensor(indices_sorted)
    if order.dim() != 1 or order.dtype.is_floating_point or order.dtype == torch.bool:
        raise MestError(f"sorted indices must be a 1-D integer array, got {order.dtype} {tuple(order.shape)}")
    keep = _int_arg(keep_lowest_n, "keep_lowest_n")
    remove = _int_arg(remove_n, "remove_n")
    if keep + remove > order.numel():
        raise MestError(f"keep_lowest_n + remove_n = {keep + remove} exceeds the {order.numel()} ordered examples")
    return order[keep : keep + remove].long().clone()


def remaining(indices: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """`indices` without those in `removed`, order kept (the reference's `np.setdiff1d` step)."""
    return indices[~torch.isin(indices, removed)]


__all__ = [
    "ForgettingOrder",
    "ForgettingTracker",
    "example_statistics",
    "read_importance",
    "remaining",
    "removal",
    "write_importance",
]
