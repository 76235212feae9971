"""The regularizer interface and its registry (like the method and metric registries)."""

from __future__ import annotations

import difflib
from typing import ClassVar

from ssu.errors import SSUError

_REGISTRY: dict[str, type[Regularizer]] = {}


class Regularizer:
    """Acts on one time step; subclasses override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_retain: ClassVar[bool] = False  # the step's forget set must carry retain windows

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, model, fs, pad_id: int) -> None:
        """Before the fine-tune, at θ_{t−1} (``model`` is the trainable model)."""

    def vector(self, vector, model):
        """The step's vector (sign applied) -> the vector to calibrate and store."""
        return vector

    def record(self) -> dict:
        """What the manifest keeps about this regularizer's work in the step."""
        return {}


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"regularizer {cls.__name__}: missing or duplicate name {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def list_regularizers() -> list[str]:
    return sorted(_REGISTRY)


def get_regularizer(name: str) -> type[Regularizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SSUError(f"unknown regularizer {name!r}{hint}; available: {', '.join(list_regularizers())}") from None
