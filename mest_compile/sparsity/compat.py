"""Switches that bring back reference-MEST behaviour where the reference surprises its users.

Every default is the corrected behaviour; `docs/QUIRKS.md` explains each decision. A switch is
named on the command line with `--compat NAME[,NAME...]`, or `--compat reference` for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from mest_compile.errors import MestError


@dataclass(frozen=True)
class Compat:
    """Reference-compatibility switches (all off = corrected behaviour)."""

    # Reference: a kernel or block whose weights sum to exactly 0 counts as empty for growth, so
    # pattern growth can overwrite live weights. Corrected: empty means "no kept position".
    signed_sum_empty: bool = False
    # Reference: a layer below 10% sparsity when masks are first built gets no mask and stays
    # dense, then crashes the first mutation. Corrected: every profiled layer is masked.
    skip_nearly_dense: bool = False
    # Reference: a never-learned example is given a forgetting count of `--epochs` rather than the
    # number of presentations actually observed.
    npresentations_from_epochs: bool = False

    @classmethod
    def names(cls) -> list[str]:
        """The switch names as typed on the command line (dashes instead of underscores)."""
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "Compat":
        """Build from switch names; `reference` turns every switch on."""
        compat = cls()
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            if name == "reference":
                compat = cls(**{f.name: True for f in fields(cls)})
                continue
            field = name.replace("-", "_")
            if field not in {f.name for f in fields(cls)}:
                known = ", ".join(["reference", *cls.names()])
                raise MestError(f"unknown compat switch {name!r}; known: {known}")
            compat = replace(compat, **{field: True})
        return compat

    def enabled(self) -> list[str]:
        """Names of the switches that are on."""
        return [f.name.replace("_", "-") for f in fields(self) if getattr(self, f.name)]
