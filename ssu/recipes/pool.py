"""A step's retain pool beyond the retain books: generic text and the owner's other memorized text.

The regularizers (``protect``, ``kl``, ...) keep what their retain pool covers, and the
calibration floor (``calibrate.keep``) checks it. The retain books alone are a narrow pool:
in the demo world removing a book at never-seen depth kept the retain books (0.87 of
memorized) but not the other books (0.50; seed 1, step 1). Two sources widen it:

- ``generic.dir``: general text the model owner always has, cut like the books;
- ``generic.others``: windows of every book *not yet removed* -- the owner's own training
  data, of which some is memorized -- taken only from the **calibration side** of the
  split that book's own step will use (``audit_split`` with that step's seed). Their audit
  side is never seen by any component of the recipe, and evaluation then grades those books
  on it alone (:func:`other_audit`), so the "not yet removed" column stays a measurement on
  text the recipe never touched. The same windows also join the calibration floor, one
  group per book. With 2-3 calibration windows a book (the worlds measured) such a floor can
  break on one flipped window and refuse the step (α 0); one floor over all pooled windows
  was tried and kept less (experiments/deep/findings/demo.md): a mean lets one book go.

A floor read on the very windows ``protect`` and ``kl`` keep is read on their training data:
in the pretrained world, at step 1, those windows stayed at 0.85-1.00 of their score while the
same books' audit windows fell to 0.22-0.98 (seeds 0-1, experiments/deep/findings/pretrained.md). ``generic.check: k``
therefore holds k windows of each pooled book back from the regularizers (:func:`checked`)
and its floor reads those alone -- a check on text of the book the protection never saw.
"""

from __future__ import annotations

import random

from ssu.config import RunConfig
from ssu.errors import SSUError


def generic_windows(cfg: RunConfig) -> list[dict]:
    """``generic.windows`` windows of the generic text (seeded), cut like the prepared books."""
    from data_prep import load_generic, load_schedule
    from data_prep.errors import PrepError

    sched = load_schedule(cfg.data)
    try:
        pool = load_generic(cfg.generic.dir, sched["prompt_words"], sched["continuation_words"],
                            pool=cfg.generic.windows, heldout=0, seed=cfg.seed)
    except PrepError as e:
        raise SSUError(f"generic.dir: {e}") from None
    return [{**w, "role": "retain"} for w in pool.train]


def other_splits(cfg: RunConfig, step: int, rows: list[dict] | None = None) -> dict[str, dict]:
    """book -> the calibration/audit split its own (later) step will record, for every book not
    yet removed after ``step``; empty unless ``generic.others``."""
    from data_prep import load_schedule, read_window_rows
    from ssu.recipes.calibrate import audit_split

    if not cfg.generic.others:
        return {}
    step_of = {b: s for s, books in load_schedule(cfg.data)["steps"].items() for b in books}
    rows = read_window_rows(cfg.data) if rows is None else rows
    out = {}
    for book in sorted({b for b, s in step_of.items() if s > step}):
        windows = [w for w in rows if w["role"] == "forget" and w["book"] == book]
        out.update(audit_split(windows, cfg.calibrate.share, cfg.seed + step_of[book]))
    return out


def other_windows(cfg: RunConfig, step: int) -> dict[str, list[dict]]:
    """book -> up to ``generic.others`` of its calibration-side windows (seeded), as retain rows,
    for every book not yet removed after ``step``; empty unless ``generic.others``."""
    from data_prep import read_window_rows
    from ssu.recipes.calibrate import calibration_windows

    if not cfg.generic.others:
        return {}
    rows = read_window_rows(cfg.data)
    # a short book keeps no side apart (its audit windows are its calibration ones): not pooled
    splits = {b: sp for b, sp in other_splits(cfg, step, rows).items() if not sp["short"]}
    by_book: dict[str, list[dict]] = {}
    for w in calibration_windows([w for w in rows if w["role"] == "forget" and w["book"] in splits], splits):
        by_book.setdefault(w["book"], []).append({**w, "role": "retain"})
    return {b: ws if len(ws) <= cfg.generic.others else
            random.Random(f"{cfg.seed + step}:{b}").sample(ws, cfg.generic.others)
            for b, ws in sorted(by_book.items())}


def checked(cfg: RunConfig, step: int, pooled: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(book -> windows for the regularizers, book -> windows for its floor). With
    ``generic.check: k`` the floor takes k of a book's pooled windows (seeded by the run's seed
    and the book, so the same at every step; at most all but one, so something of every book
    stays protected) and the regularizers the rest; with k = 0,
    or a book of one window, both get every window."""
    k = cfg.generic.check
    if not k:
        return pooled, pooled
    protect, floor = {}, {}
    for book, ws in pooled.items():
        if len(ws) < 2:
            protect[book] = floor[book] = ws
            continue
        # the same windows at every step: held back from the protection of every step, not only this one
        held = set(random.Random(f"check:{cfg.seed}:{book}").sample(range(len(ws)), min(k, len(ws) - 1)))
        floor[book] = [w for i, w in enumerate(ws) if i in held]
        protect[book] = [w for i, w in enumerate(ws) if i not in held]
    return protect, floor


def other_audit(cfg: RunConfig, step: int) -> dict[str, set[int]]:
    """book -> audit windows of the books not yet removed after ``step`` whose calibration side
    joined the pool (evaluation grades them there only)."""
    return {b: set(s["audit"]) for b, s in other_splits(cfg, step).items() if not s["short"]}



def protected_rows(cfg: RunConfig, retain: list[dict], pooled: dict[str, list[dict]]) -> list[dict]:
    """The rows the regularizers protect: the retain books' ``retain`` windows, the generic text's
    (``generic.dir``) and the other books' windows ``pooled`` for the regularizers (:func:`checked`),
    each re-cut to ``generic.prompt_words`` prompt words when that is set (:func:`recut`)."""
    rows = retain + (generic_windows(cfg) if cfg.generic.dir else []) + [w for ws in pooled.values() for w in ws]
    k = cfg.generic.prompt_words
    return rows if k is None else [recut(w, k) for w in rows]


def recut(w: dict, k: int) -> dict:
    """The window's text with its first ``k`` words as the prompt and the rest as the continuation.

    ``kl`` and ``protect`` read a row's continuation tokens only, so a window cut as the books are
    (prompt and continuation of equal length) has half its text unprotected; the floors read the
    pooled windows as cut, and the protection held exactly those tokens while the same books' other
    windows fell (experiments/deep/floor_signals.py). Re-cut, the protection covers all but k words."""
    words = (w["prompt"] + " " + w["continuation"]).split()
    k = max(1, min(k, len(words) - 1))
    return {**w, "prompt": " ".join(words[:k]), "continuation": " ".join(words[k:])}
