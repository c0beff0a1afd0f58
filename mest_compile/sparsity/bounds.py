"""When the masks mutate and to which sparsities: MEST's bound strings, parsed as MEST parses them.

MEST drives Elastic Mutation with three command-line strings and one integer:

- ``LOWER_BOUND`` (``"0.92-0.91-0.9"``): the prune-to sparsity of each stage;
- ``UPPER_BOUND`` (``"0.9-0.9-0.9"``): the grow-to sparsity of each stage;
- ``MASK_UPDATE_DECAY_EPOCH`` (``"90-120"``): the epochs where the next stage starts;
- ``SP_MASK_UPDATE_FREQ`` (``5``): masks update when ``epoch % freq == 0``, epoch 0 included.

A stage is the number of decay epochs already reached. Each bound string is indexed by the
stage, capped at its last entry, so a single float holds for the whole run. Without a decay
string the reference never updates the masks, and neither does this schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from mest_compile.errors import MestError


def _parse_bound(text: str | float, what: str) -> tuple[float, ...]:
    """Entries of one bound string; MEST first tries the whole string as a single float."""
    raw = str(text)
    try:
        # The reference calls float() on the whole string before splitting, so "1e-3" is one
        # value, not two parts.
        parts: list[str] = [str(float(raw))]
    except ValueError:
        parts = raw.split("-")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise MestError(f"{what} {raw!r}: {part!r} is not a number (expected e.g. '0.92-0.91-0.9')") from None
        if not 0.0 <= value < 1.0:
            raise MestError(f"{what} {raw!r}: {part.strip()} is not a sparsity in [0, 1)")
        values.append(value)
    return tuple(values)


def _parse_decay(text: str | int, what: str) -> tuple[int, ...]:
    """Decay epochs; like the reference, a whole-string integer is tried before splitting."""
    raw = str(text)
    try:
        parts: list[str] = [str(int(raw))]
    except ValueError:
        parts = raw.split("-")
    epochs: list[int] = []
    for part in parts:
        try:
            epoch = int(part)
        except ValueError:
            raise MestError(f"{what} {raw!r}: {part!r} is not an epoch (expected e.g. '90-120')") from None
        if epoch < 0:
            raise MestError(f"{what} {raw!r}: epoch {epoch} is negative")
        if epochs and epoch <= epochs[-1]:
            raise MestError(f"{what} {raw!r}: epochs must increase, {epoch} follows {epochs[-1]}")
        epochs.append(epoch)
    return tuple(epochs)


@dataclass(frozen=True)
class BoundSchedule:
    """Prune-to / grow-to sparsities per stage and the epochs where masks update.

    Example:
        >>> s = BoundSchedule.parse("0.92-0.91-0.9", "0.9-0.9-0.9", "90-120", 5)
        >>> s.stage(89), s.stage(90), s.stage(120)
        (0, 1, 2)
        >>> s.bounds(95)
        (0.91, 0.9)
        >>> s.updates_at(85), s.updates_at(86)
        (True, False)
    """

    # Prune-to sparsity per stage (MEST's LOWER_BOUND); the last entry holds for later stages.
    lower: tuple[float, ...]
    # Grow-to sparsity per stage (MEST's UPPER_BOUND); 0 means "grow back to dense".
    upper: tuple[float, ...]
    # Epochs where the next stage starts; None means the masks never update (MEST's default).
    decay_epochs: tuple[int, ...] | None
    # Update every `update_freq` epochs counting from epoch 0; 5 is MEST's default.
    update_freq: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.update_freq, bool) or not isinstance(self.update_freq, int) or self.update_freq < 1:
            raise MestError(f"mask update frequency must be an integer >= 1 epoch, got {self.update_freq!r}")
        if not self.lower or not self.upper:
            raise MestError(f"bounds need at least one entry, got lower={self.lower!r} upper={self.upper!r}")
        for stage in range(len(self.decay_epochs or ()) + 1):
            lower, upper = self._at(stage)
            # Growth only adds weights back; an upper (grow-to) sparsity above the lower one
            # would ask growth to prune. The reference clamps this for irregular and crashes
            # for block, so it is rejected up front.
            if upper > lower:
                raise MestError(
                    f"upper bound {upper} (grow-to) exceeds lower bound {lower} (prune-to) at stage {stage}; "
                    "the grow-to sparsity must not be sparser than the prune-to sparsity"
                )

    @classmethod
    def parse(
        cls,
        lower: str | float,
        upper: str | float,
        decay_epochs: str | int | None,
        update_freq: int | str = 5,
    ) -> "BoundSchedule":
        """Build from MEST's command-line values.

        Args:
            lower: ``LOWER_BOUND``, e.g. ``"0.92-0.91-0.9"`` or ``0.9``.
            upper: ``UPPER_BOUND``, e.g. ``"0.9-0.9-0.9"``.
            decay_epochs: ``MASK_UPDATE_DECAY_EPOCH``, e.g. ``"90-120"`` or ``90``; None or
                ``""`` means the masks never update.
            update_freq: ``SP_MASK_UPDATE_FREQ`` in epochs.

        Raises:
            MestError: naming the malformed string.
        """
        decay = None
        if decay_epochs is not None and str(decay_epochs).strip() != "":
            decay = _parse_decay(decay_epochs, "mask update decay epochs")
        try:
            freq = int(update_freq) if not isinstance(update_freq, bool) else update_freq
        except (TypeError, ValueError):
            raise MestError(f"mask update frequency must be an integer >= 1 epoch, got {update_freq!r}") from None
        if isinstance(update_freq, float) and update_freq != freq:
            raise MestError(f"mask update frequency must be an integer >= 1 epoch, got {update_freq!r}")
        return cls(_parse_bound(lower, "lower bound"), _parse_bound(upper, "upper bound"), decay, freq)

    def stage(self, epoch: int) -> int:
        """The number of decay epochs reached at `epoch` (0 without a decay string)."""
        if epoch < 0:
            raise MestError(f"epoch must be >= 0, got {epoch}")
        return sum(1 for d in self.decay_epochs or () if epoch >= d)

    def bounds(self, epoch: int) -> tuple[float, float]:
        """``(lower, upper)``: the prune-to and grow-to sparsities in force at `epoch`."""
        return self._at(self.stage(epoch))

    def updates_at(self, epoch: int) -> bool:
        """Whether the masks mutate at the start of `epoch`."""
        if epoch < 0:
            raise MestError(f"epoch must be >= 0, got {epoch}")
        return self.decay_epochs is not None and epoch % self.update_freq == 0

    @property
    def min_sparsity(self) -> float:
        """The densest any layer gets between updates: what a packed format must hold."""
        return min(min(self.upper), min(self.lower))

    def _at(self, stage: int) -> tuple[float, float]:
        # Each string is capped at its own last entry. For strings of equal length this is the
        # reference's index exactly; for unequal ones the reference indexes both strings with a cap
        # taken from UPPER_BOUND's length (a single-float upper pins lower to its first entry, a
        # shorter lower crashes), which is a bug, not a recipe.
        return self.lower[min(stage, len(self.lower) - 1)], self.upper[min(stage, len(self.upper) - 1)]
