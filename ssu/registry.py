"""One registry class for every kind of component: methods, regularizers, text metrics,
evaluation sets, model-level metrics, probes.

After ``lm_eval/api/registry.py``: a component is one file that registers itself on
import with a decorator, ``@METHODS.register("ssu")``; a kind is one :class:`Registry`
instance that lives beside the kind's interface (``ssu.methods.base.METHODS``, ...);
a package of built-ins registers them all by calling :func:`import_builtins` from its
``__init__``. An unknown name fails in one line with the closest registered name,
worded the same for every kind::

    unknown regularizer 'fishr'. Did you mean 'fisher'? Available: fisher, guard, kl, retain-mask

A component that takes parameters declares them as a dataclass, ``Args``, in its own
file (the entry's ``Args`` attribute); :func:`ssu.config.build` turns a config block's
``args`` into it. ``ssu list KIND`` lists any kind (:func:`kinds`).

This module imports nothing of the project but :mod:`ssu.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ssu.errors import SSUError

T = TypeVar("T")

_KINDS: dict[str, Registry] = {}


class UnknownNameError(SSUError, KeyError):
    """An unregistered name: a ``KeyError`` (a lookup failed) and an ``SSUError`` (one line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_message(kind: str, name: str, available: list[str]) -> str:
    """``unknown evaluation set 'retian'. Did you mean 'retain'? Available: ...`` -- the one wording."""
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Available: {', '.join(available) or 'none'}"


class Registry(Generic[T]):
    """Entries of one kind by name.

    ``kind`` names an entry in messages ("evaluation set"); ``plural`` is the word
    ``ssu list`` takes ("eval-sets"). Registering a second entry under a name is an
    error: two runs with the same config would otherwise compute different things.
    """

    def __init__(self, kind: str, plural: str):
        if plural in _KINDS:
            raise ValueError(f"a registry of {plural} exists already")
        self.kind, self.plural = kind, plural
        self._entries: dict[str, T] = {}
        _KINDS[plural] = self

    def add(self, name: str, entry: T) -> T:
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, **attributes: Any) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as ``name``.

        ``attributes`` are set on it (``name`` included), so a class carries its own
        metadata; the decorated object is returned unchanged otherwise.
        """

        def decorator(obj: T) -> T:
            for key, value in {"name": name, **attributes}.items():
                setattr(obj, key, value)
            return self.add(name, obj)

        return decorator

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a component of their own clean up with it)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(unknown_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter([self._entries[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> list[tuple[str, str, list[tuple[str, Any]]]]:
        """``(name, description, [(parameter, default), ...])`` per entry, for ``ssu list``."""
        return [(n, description(e), args_of(e)) for n, e in sorted(self._entries.items())]


def description(entry: Any) -> str:
    """An entry's ``description`` attribute, else the first line of its docstring."""
    text = getattr(entry, "description", "") or (getattr(entry, "__doc__", "") or "")
    return text.strip().split("\n")[0]


def args_of(entry: Any) -> list[tuple[str, Any]]:
    """The parameters an entry declares (its ``Args`` dataclass) with their defaults."""
    cls = getattr(entry, "Args", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return []
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append((f.name, None if default is dataclasses.MISSING else default))
    return out


def kinds() -> dict[str, Registry]:
    """Every registry created so far, by plural name (``ssu list`` imports the component packages first)."""
    return dict(sorted(_KINDS.items()))


def import_builtins(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every module of ``package`` (not ``skip``), so each built-in registers itself.

    The one way a kind's package registers its built-ins: ``import_builtins(__name__)``
    in its ``__init__``. A new component is a new file there, and no other file changes.
    """
    module = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
