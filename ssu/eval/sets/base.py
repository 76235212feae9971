"""The types of an evaluation set and of what it selects from (see ``ssu.eval.sets``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GOALS = ("forget", "keep", "unseen", None)


@dataclass(frozen=True)
class SetContext:
    """What a set selects from: the prepared windows, the schedule and the step."""

    step: int
    windows: list[dict]  # every window of the prepared directory (book, role, step, window, ...)
    step_of: dict[str, int]  # book -> the step that removes it
    config: Any  # the run's RunConfig


@dataclass(frozen=True)
class EvalSet:
    name: str
    select: Callable[[SetContext], list[dict]]
    goal: str | None
    label: str  # as report rows name it ("not yet removed")
    description: str = ""
