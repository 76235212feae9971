"""The method interface and its registry."""

from __future__ import annotations

import difflib
from typing import ClassVar

import torch

from ssu.engine.losses import Batch
from ssu.errors import SSUError

_REGISTRY: dict[str, type[UnlearningMethod]] = {}


class UnlearningMethod:
    """One way of turning a forget set into a weight change.

    Subclasses set the class attributes and implement :meth:`loss`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sign: ClassVar[int] = -1  # stored vector = sign * (theta_ft - theta_prev)
    needs_retain: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False  # a frozen copy of theta_{t-1} (NPO)
    # Config keys a named recipe sets; `ssu init` merges the user's keys over them.
    recipe: ClassVar[dict] = {}

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def uses_random_labels(self) -> bool:
        return False

    @property
    def saliency_mode(self) -> str:
        """"step", "fixed" or "none": how gradients are masked before each update."""
        return "none"

    def loss(self, model, batch: Batch, reference=None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> type[UnlearningMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SSUError(f"unknown method {name!r}{hint}; available: {', '.join(list_methods())}") from None
