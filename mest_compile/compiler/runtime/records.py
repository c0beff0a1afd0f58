"""Which tuning records kernel builds replay: handed in, like MetaSchedule's `with database:`.

The runtime never looks records up by itself. A provider (`tune.records.TuningRecords`, or any
object with `choice` and `key`) is put in effect with `with using(records):` (or `with records:`),
or installed for the rest of the process with `install(records)`; builds pick the provider in
effect at the time they are asked for, and a layer's backend keeps the one it was created with.
Kernels are cached per provider (`key`), so switching records never reuses the wrong kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol

from mest_compile.compiler.formats.geometry import ConvGeometry

if TYPE_CHECKING:
    from mest_compile.compiler.families import KernelFamily
    from mest_compile.compiler.target import Target


class TunedChoices(Protocol):
    """Tuned tiles and schedules for builds (what `tune.records.TuningRecords` provides)."""

    #: Names the records in cache keys (e.g. the work dir).
    key: str

    def choice(self, family: KernelFamily, geometry: ConvGeometry, target: Target) -> tuple[Any, dict[str, Any]]:
        """`(tiles, traces by phase)` tuned for `geometry` on `target`; `(None, {})` when none are."""


_CURRENT: ContextVar[TunedChoices | None] = ContextVar("mest_compile_records", default=None)


def current_records() -> TunedChoices | None:
    """The records in effect (None: hand-written schedules only)."""
    return _CURRENT.get()


def push(records: TunedChoices | None) -> Token[TunedChoices | None]:
    """Put `records` in effect until `pop` of the returned token (what `with records:` does)."""
    return _CURRENT.set(records)


def pop(token: Token[TunedChoices | None]) -> None:
    """Restore the records in effect before the `push` that returned `token`."""
    _CURRENT.reset(token)


@contextlib.contextmanager
def using(records: TunedChoices | None) -> Iterator[TunedChoices | None]:
    """Put `records` in effect for the builds inside the block (None: none)."""
    token = push(records)
    try:
        yield records
    finally:
        pop(token)


def install(records: TunedChoices | None) -> None:
    """Put `records` in effect from now on, outside any `using` block (a training run's records)."""
    _CURRENT.set(records)


def records_key(records: TunedChoices | None) -> str:
    """The part of a cache key that names `records`."""
    return "" if records is None else records.key
