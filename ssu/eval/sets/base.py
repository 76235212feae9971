"""The types of an evaluation set and of what it selects from (see ``ssu.eval.sets``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GOALS = ("forget", "keep", "unseen", None)
ALL_WINDOWS = ":all"  # suffix of a removed set's rows over all its windows (audit and calibration)


@dataclass(frozen=True)
class SetContext:
    """What a set selects from: the prepared windows, the schedule and the step."""

    step: int
    windows: list[dict]  # every window of the prepared directory (book, role, step, window, ...)
    step_of: dict[str, int]  # book -> the step that removes it
    config: Any  # the run's RunConfig
    # book -> its audit windows, for books whose step kept windows apart from calibration
    audit: dict[str, set[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSet:
    name: str
    select: Callable[[SetContext], list[dict]]
    goal: str | None
    label: str  # as report rows name it ("not yet removed")
    description: str = ""
