"""A reservoir buffer of past examples (Mammoth's, as SparCL and DER++ use it), with stored logits.

Every example of the stream has the same chance, capacity / seen, of being in the buffer: the
first `capacity` fill it, the n-th after that replaces a uniformly drawn slot with probability
capacity / n. Storage is allocated at the first example (its shape is known then). Its own
generator draws both the replacements and the rehearsal batches, so a resumed run repeats them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mest_compile.errors import MestError

FIELDS = ("x", "y", "logits")


class ReservoirBuffer:
    """Reservoir sampling over a stream of `(x, y, logits)` examples.

    Example:
        >>> buffer = ReservoirBuffer(capacity=2, seed=0)
        >>> buffer.add_(torch.zeros(5, 1, 8, 8), torch.arange(5), torch.zeros(5, 10))
        >>> len(buffer), buffer.seen
        (2, 5)
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise MestError(f"buffer size must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.storage: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def slots(self, count: int) -> torch.Tensor:
        """Where the next `count` stream examples go: a slot index, or -1 for "not kept"."""
        out = torch.full((count,), -1, dtype=torch.long)
        for i in range(count):
            position = self.seen + i
            if position < self.capacity:
                out[i] = position
            else:
                # Uniform in [0, position]: kept with probability capacity / (position + 1).
                draw = int(torch.randint(position + 1, (1,), generator=self.generator))
                if draw < self.capacity:
                    out[i] = draw
        return out

    @torch.no_grad()
    def add_(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        """Offer a batch of stream examples to the buffer (later ones in a batch win a shared slot)."""
        batch = {"x": x.detach(), "y": y.detach(), "logits": logits.detach().float()}
        if not self.storage:
            self.storage = {key: torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype,
                                             device=value.device) for key, value in batch.items()}
        slots = self.slots(len(y))
        self.seen += len(y)
        kept = slots >= 0
        for key, value in batch.items():
            self.storage[key][slots[kept].to(value.device)] = value[kept.to(value.device)]

    def draw(self, size: int) -> dict[str, torch.Tensor]:
        """`min(size, len(self))` distinct stored examples, drawn uniformly: a dict of x, y, logits."""
        if not len(self):
            raise MestError("cannot draw from an empty rehearsal buffer")
        pick = torch.randperm(len(self), generator=self.generator)[:size]
        return {key: value[pick.to(value.device)] for key, value in self.storage.items()}

    def state_dict(self) -> dict[str, Any]:
        """Stored examples, stream position and generator (everything a resumed run needs)."""
        return {"seen": self.seen, "generator": self.generator.get_state(),
                "storage": {key: value.clone() for key, value in self.storage.items()}}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore `state_dict()`'s output, the stored tensors on `device`."""
        if set(state) != {"seen", "generator", "storage"} or set(state["storage"]) - set(FIELDS):
            raise MestError("rehearsal buffer state must have keys ['generator', 'seen', 'storage'], "
                            f"got {sorted(state)}")
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])
        self.storage = {key: torch.as_tensor(value).to(device).clone() for key, value in state["storage"].items()}
