"""A small name -> entry registry with one-line did-you-mean errors.

The evaluation sets (``ssu.eval.sets``) and the model-level metrics
(``ssu.eval.model_metrics``) are each one of these: a built-in entry is one file that
registers itself on import, and an unknown name from a config or the command line
fails with the closest registered name and the full list, as the text-metric
registry (``ssu.metrics.registry``) does.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from ssu.errors import SSUError

T = TypeVar("T")


class UnknownNameError(SSUError, KeyError):
    """An unregistered name: a ``KeyError`` (a lookup failed) and an ``SSUError`` (one line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries by name; ``kind`` names them in error messages ("evaluation set")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry``; a second entry under one name is an error (runs would disagree)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            pass
        raise UnknownNameError(unknown_message(self.kind, name, self.names()))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries[n] for n in self.names())


def unknown_message(kind: str, name: str, available: list[str]) -> str:
    """``unknown evaluation set 'retian'. Did you mean 'retain'? Available: ...``."""
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Available: {', '.join(available) or 'none'}"
