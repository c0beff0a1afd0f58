"""Name -> object registries: schemes, models, datasets, targets are looked up, never branched on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mest_compile.errors import MestError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names (and aliases) to registered objects.

    Example:
        >>> MODELS: Registry[type] = Registry("model")
        >>> @MODELS.register("tiny")
        ... class Tiny: ...
        >>> MODELS.get("tiny") is Tiny
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering `obj` under `name` and its aliases."""

        def add(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return add

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register `obj` under `name`; a name may be registered once."""
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> T:
        """Unregister `name` and its aliases; returns the object (plug-ins registered for a while, tests)."""
        key = self.canonical(name)
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != key}
        return self._items.pop(key)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        key = self._aliases.get(name, name)
        if key not in self._items:
            known = ", ".join(self.names())
            raise MestError(f"unknown {self.kind} {name!r}; known: {known}")
        return key

    def get(self, name: str) -> T:
        """The object registered as `name`; a `MestError` listing the known names otherwise."""
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names (aliases excluded), in registration order."""
        return list(self._items)

    def aliases(self) -> dict[str, str]:
        """Alias -> registered name."""
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
