"""Evaluation sets: which windows are scored after a step, and what should happen to them.

Each set is one registered file here (``register_eval_set``); a config names the sets
it wants (``eval.sets``) and may add its own from JSON lines files
(``eval.extra_sets``, see ``user.py``). A set has a *goal* that report, compare and
the membership-inference metric read instead of hard-coded names:

- ``forget``: must stay forgotten (``removed-now``, ``removed-earlier``);
  the members of the membership-inference attack;
- ``keep``: must stay memorized (``retain``, ``future`` = books not yet removed);
- ``unseen``: never trained on (``heldout``): utility, and MIA's non-members;
- ``None``: scored and reported, counted in no group (a user set's default).

Windows carry ``book, window, prompt, continuation`` and get ``set`` added; a book
belongs to one set at a given step. Windows of a ``forget`` set also get ``audit``:
false for the windows its step tuned α on (``SetContext.audit``), which evaluation
keeps out of the set's rows and reports again, with them, as ``<set>:all``.
"""

from __future__ import annotations

import random

from ssu.eval.sets.base import ALL_WINDOWS, GOALS, EvalSet, SetContext
from ssu.eval.sets.user import check_spec, user_set
from ssu.registry import Registry, UnknownNameError, import_builtins, unknown_message

__all__ = ["ALL_WINDOWS", "GOALS", "SETS", "EvalSet", "SetContext", "configured_sets", "get_eval_set",
           "register_eval_set", "select_windows", "set_goals"]

SETS: Registry[EvalSet] = Registry("evaluation set", "eval-sets")


def register_eval_set(name: str, *, goal: str | None, label: str | None = None, description: str = ""):
    """Decorator registering ``select(ctx) -> windows`` as the evaluation set ``name``."""
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")

    def decorator(fn):
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        SETS.add(name, EvalSet(name, fn, goal, label or name, doc))
        return fn

    return decorator


def get_eval_set(name: str, config=None) -> EvalSet:
    """The registered set ``name``, or the user set of that name in ``config.eval.extra_sets``."""
    extra = dict(config.eval.extra_sets) if config is not None else {}
    if name in SETS:
        return SETS.get(name)
    if name in extra:
        return user_set(name, extra[name])
    raise UnknownNameError(unknown_message(SETS.kind, name, sorted(SETS.names() + list(extra))))


def configured_sets(config) -> list[EvalSet]:
    """The run's sets: ``eval.sets`` (registered names), then every ``eval.extra_sets`` entry."""
    return [get_eval_set(n, config) for n in config.eval.sets] + \
        [get_eval_set(n, config) for n in config.eval.extra_sets]


def set_goals(config=None) -> dict[str, str | None]:
    """Goal of every set a results file can name: the registered ones and the run's own."""
    goals = {s.name: s.goal for s in SETS}
    if config is not None:
        goals.update({n: get_eval_set(n, config).goal for n in config.eval.extra_sets})
    goals.update({n + ALL_WINDOWS: g for n, g in list(goals.items()) if g == "forget"})
    return goals


def check_config(config) -> None:
    """Fail on an unknown set name or a bad user set (called when a run config is resolved)."""
    from ssu.errors import SSUError

    for name in config.eval.sets:
        SETS.get(name)
    for name, spec in config.eval.extra_sets.items():
        if name in SETS:
            raise SSUError(f"eval.extra_sets: {name!r} is a registered evaluation set; choose another name")
        check_spec(name, spec)


def select_windows(config, ctx: SetContext) -> list[dict]:
    """Windows to score after ``ctx.step``, each tagged with its set; ``eval.max_windows`` per book.

    ``ctx`` holds the prepared windows and the schedule, which the caller (the evaluate
    recipe) reads; nothing here opens a file but a user set's own.
    """
    by_book: dict[tuple[str, str], list[dict]] = {}
    for s in configured_sets(config):
        for w in s.select(ctx):
            tagged = {**w, "set": s.name}
            if s.goal == "forget":
                tagged["audit"] = w["book"] not in ctx.audit or w["window"] in ctx.audit[w["book"]]
            by_book.setdefault((s.name, w["book"]), []).append(tagged)
    rng = random.Random(config.seed)
    out = []
    # Books in the prepared file's order, each sampled in turn: the same seed keeps
    # choosing the same windows whichever sets are configured.
    first = {}
    for i, w in enumerate(ctx.windows):
        first.setdefault(w["book"], i)
    for _, ws in sorted(by_book.items(), key=lambda kv: (first.get(kv[0][1], len(first)), kv[0])):
        if config.eval.max_windows and len(ws) > config.eval.max_windows:
            keep = sorted(rng.sample(range(len(ws)), config.eval.max_windows))
            ws = [ws[i] for i in keep]
        out.extend(ws)
    return out


import_builtins(__name__, skip=("base", "user"))
