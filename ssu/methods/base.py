"""The method interface and its registry (:data:`METHODS`).

A method says how one time step fine-tunes the model -- its loss on a batch, which rows
a micro-batch carries, how gradients are masked -- and how the resulting weight change
enters the stack (``sign``: SSU and task-vector methods *learn* the book and store the
negated change; ascent methods already move away from it and store the change as it
is). Its parameters are its own ``Args`` dataclass, filled from the run config's
``method: {name, args}`` block. Everything else -- batching, the stack, the manifest,
evaluation -- is shared by the step recipe.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ssu.engine.losses import Batch, Row
from ssu.registry import Registry


class UnlearningMethod:
    """One way of turning a forget set into a weight change.

    Subclasses register with ``@METHODS.register("name", description=...)``, set the class
    attributes, declare ``Args`` (a dataclass) if they take parameters, and implement
    :meth:`loss`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Args: ClassVar[type | None] = None
    sign: ClassVar[int] = -1  # stored vector = sign * (theta_ft - theta_prev)
    needs_retain: ClassVar[bool] = False  # every micro-batch carries retain rows
    needs_reference: ClassVar[bool] = False  # a frozen theta_{t-1} to compare against (NPO)
    uses_random_labels: bool = False  # every window brings K random-label rows
    saliency_mode: str = "none"  # "step", "fixed" or "none": how gradients are masked before each update
    saliency_k: float = 1.0  # gamma = mean + k * std of |grad|
    saliency_density: float | None = None  # or keep the top fraction
    generates: bool = False  # decodes with the model during training (start_epoch): not under FSDP

    def __init__(self, args: Any = None):
        self.args = args

    def prepare(self, model, fs) -> None:
        """Called once at θ_{t−1} with the step's forget set, before any weight moves (a method
        that precomputes what it compares against; nothing by default)."""

    def start_epoch(self, model, fs, epoch: int) -> None:
        """Called by the fine-tune before each epoch (from 1) with the model as it is then (a
        method that trains on its own outputs decodes them here; nothing by default)."""

    def rows(self, i: int) -> list[Row]:
        """Rows the method adds to forget window ``i``'s micro-batch beside its learning pair
        (none by default)."""
        return []

    def loss(self, model, batch: Batch, reference=None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


METHODS: Registry[type[UnlearningMethod]] = Registry("method", "methods")
