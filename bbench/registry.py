"""Typed name -> object registries with "did you mean" errors.

Methods, datasets, encoders and fusion heads are all looked up by name. One small class
serves all of them so that every unknown name anywhere in bbench fails the same way: with
the close matches and the full list of what is available.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0])


def suggest(name: str, choices: list[str]) -> str:
    """A 'did you mean' fragment for `name` among `choices` (case-insensitive)."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?"


class Registry(Generic[T]):
    """A case-insensitive mapping from names (and aliases) to registered objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._canonical: dict[str, str] = {}  # lower-case name or alias -> canonical name
        self._aliases: list[str] = []

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering an object under `name` and its `aliases`."""

        def decorate(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        for key in (name, *aliases):
            if key.lower() in self._canonical:
                raise ValueError(f"{self.kind} name {key!r} is already registered")
            self._canonical[key.lower()] = name
        self._items[name] = obj
        self._aliases.extend(aliases)

    def remove(self, name: str) -> T:
        """Unregister `name` and its aliases (a plugin unloading, a test cleaning up)."""
        canonical = self.canonical(name)
        keys = [k for k, v in self._canonical.items() if v == canonical]
        for key in keys:
            del self._canonical[key]
        self._aliases = [a for a in self._aliases if a.lower() not in keys]
        return self._items.pop(canonical)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        try:
            return self._canonical[name.lower()]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{suggest(name, self.names() + self.aliases())}"
                f" Available: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._items)

    def aliases(self) -> list[str]:
        return list(self._aliases)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._canonical

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
