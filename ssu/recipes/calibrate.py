"""Steps that do just enough: choose a step's α by bisection so the removed book just reaches a target.

A negated task vector removes a book and, with it, some of everything else: the
damage to retained books grows with α·v while the removed book's ROUGE-L falls off a
cliff somewhere in α. So instead of α = 1 (the reference) or a coarse grid, the step
measures the removed book's greedy-continuation ROUGE-L on a fixed sample of its
windows at θ_{t−1} + α·v_t and bisects for the smallest α in [0, ``alpha_max``] that
brings it to the target: ``fraction`` × its score at θ_{t−1} (default) or an absolute
``rouge``. Bisection assumes the score falls with α; the trials are recorded so a run
shows where that held. Everything is deterministic: the sample is drawn with the
step's seed and decoding is greedy.

Calibration apart from evaluation (:func:`audit_split`): a recipe must not be graded
on the windows it tuned itself on, so each removed book's windows split, with the
step's seed, into *calibration* windows -- the only ones calibration and early stop
see -- and *audit* windows, on which evaluation reports the book. The split is
recorded in the manifest; a book too short to split (fewer than ``MIN_SPLIT``
windows) says so in one line, uses all its windows for both and is flagged.

The α is applied exactly, in place (:class:`ssu.engine.alpha.AlphaView`: a LoRA step
scales its adapter, a full fine-tune sets θ_{t−1} + α·v in its float32 weights), so
calibration adds generation passes but no copy of the model. :class:`EarlyStop` uses the same
target to end a step's fine-tune at the first epoch whose vector already reaches it.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence

from ssu.engine.alpha import AlphaView
from ssu.recipes.targets import absolute_target, mean_score

MIN_SPLIT = 4  # windows a book needs to be split (at least 2 calibration and 2 audit at a share of 1/2)


def audit_split(windows: Sequence[dict], share: float, seed: int) -> dict[str, dict]:
    """Per book: ``{"calibration": [window ids], "audit": [window ids], "short": bool}``.

    A seeded ``share`` of each book's windows (at least one, at most all but one) is
    for calibration; the rest is for evaluation. Books with fewer than ``MIN_SPLIT``
    windows are not split: both lists hold every window and ``short`` is true.
    """
    by_book: dict[str, list[int]] = {}
    for w in windows:
        by_book.setdefault(w["book"], []).append(int(w["window"]))
    out = {}
    for book, ids in sorted(by_book.items()):
        ids = sorted(ids)
        if len(ids) < MIN_SPLIT:
            print(f"note: book {book!r} has {len(ids)} windows, too few to keep calibration apart from "
                  f"evaluation; calibration uses all of them (flagged in the manifest)", file=sys.stderr)
            out[book] = {"calibration": ids, "audit": ids, "short": True}
            continue
        k = min(len(ids) - 1, max(1, round(share * len(ids))))
        cal = sorted(random.Random(f"{seed}:{book}").sample(ids, k))
        out[book] = {"calibration": cal, "audit": [i for i in ids if i not in set(cal)], "short": False}
    return out


def calibration_windows(windows: Sequence[dict], split: dict[str, dict]) -> list[dict]:
    """The windows of ``split``'s calibration side."""
    return [w for w in windows if int(w["window"]) in set(split[w["book"]]["calibration"])]


def sample_windows(windows: Sequence[dict], n: int, seed: int) -> list[dict]:
    if len(windows) <= n:
        return list(windows)
    return random.Random(seed).sample(list(windows), n)


def calibrate_alpha(score: Callable[[float], float], settings, target: Callable[[float], float] | None = None,
                    earlier: Callable[[float], dict[str, float]] | None = None,
                    levels: dict[str, float] | None = None, keep: dict[str, float] | None = None,
                    anchors: dict[str, float] | None = None) -> dict:
    """Smallest α in [0, alpha_max] (to the search's resolution) with ``score(α)`` <= target,
    among the α that keep every earlier-removed book within its bound: by bisection, or with
    ``settings.search == "scan"`` the first crossing up a geometric grid (:func:`_scan`).

    ``settings``: the run config's ``calibrate`` (:class:`ssu.config.CalibrateSettings`).
    ``score(α)`` applies α and measures the book removed now; ``target(score at α = 0)``
    gives the absolute target (None: ``settings.rouge``, else ``settings.fraction`` × it).

    Constrained calibration: with ``earlier`` (α -> {book: score}, measured at the α just
    applied) every earlier-removed book b gets the bound max(``levels[b]``, its score at
    α = 0) + ``settings.slack`` -- it may sit where it is or at its own target, never
    higher -- and a text named in ``keep`` (the retain books, also measured by ``earlier``) the
    floor ``keep[b]`` × its score at α = 0: it may lose at most that share -- or, with
    ``anchors[b]`` (its score at an earlier step, ``calibrate.keep_from: memorized``),
    ``keep[b]`` × that, so losses that each step's floor allows cannot compound; a text already
    under such a floor may not fall further (its floor is then its score at α = 0). α = 0 is always
    admissible. An α whose check puts any book over its bound is never chosen, and the
    search never goes above the α that reaches the target (a broken model satisfies every
    bound): if the bisection's α breaks a bound, a second bisection below it looks for the
    largest admissible α, and the record says ``constrained`` (the scan with ``patience`` may
    step over a few failed checks on its way up: :func:`_scan`). Returns the record the
    manifest keeps (chosen α, target, score at α = 0, reached, every trial as ``[α, score]``,
    with constraints the bounds and every check as ``[α, {book: score}, admissible]``); the
    model is left at the chosen α.

    ``settings.overshoot`` δ > 0: the α that reaches the target is the crossing on the
    calibration windows; a book's other windows can cross a little further up (Gutenberg seeds
    1-2, step 1: the audit windows stayed memorized at the calibration windows' α,
    experiments/deep). The step then takes min(alpha_max, α × (1 + δ)) where that α's check
    holds (recorded as ``overshoot_from``), else the crossing itself.

    ``settings.backoff`` β > 0: an α limited by a check (``constrained``) is the largest that
    keeps a window of a checked book from flipping, so it leaves the model on the edge of that
    flip, and the next step's first α flips it (Gutenberg seed 1: a floor window at 1.00 at step
    2's α 0.691, at 0.76 from α 0.003 of step 3, which was refused). The step then takes
    α × (1 − β) where that α's check holds (recorded as ``backed_off_from``).
    """
    trials: list[list[float]] = []
    checks: list[list] = []
    bounds: dict[str, float] = {}
    floors: dict[str, float] = {}

    def measure(a: float) -> float:
        s = score(a)
        trials.append([round(a, 6), round(s, 6)])
        if earlier is not None:
            seen = earlier(a)
            if not bounds and not floors:  # the first measurement is at α = 0
                floors.update({b: min(keep[b] * (anchors or {}).get(b, v), v) for b, v in seen.items()
                               if b in (keep or {})})
                bounds.update({b: max((levels or {}).get(b, 0.0), v) + settings.slack for b, v in seen.items()
                               if b not in floors})
            checks.append([round(a, 6), {b: round(v, 6) for b, v in seen.items()},
                           all(v <= bounds[b] + 1e-12 if b in bounds else v >= floors[b] - 1e-12
                               for b, v in seen.items())])
        return s

    def admissible(a: float) -> bool:
        return earlier is None or next(c[2] for c in reversed(checks) if c[0] == round(a, 6))

    start = measure(0.0)
    target = target(start) if target is not None else \
        settings.rouge if settings.rouge is not None else settings.fraction * start
    record = {"target": round(target, 6), "score_at_0": round(start, 6), "trials": trials}
    if earlier is not None:
        record.update(bounds={b: round(v, 6) for b, v in bounds.items()}, checks=checks)
        if floors:
            record["floors"] = {b: round(v, 6) for b, v in floors.items()}
        if anchors is not None:  # what the floors were taken from, for the next step to carry
            record["anchors"] = {b: round(anchors.get(b, checks[0][1][b]), 6) for b in floors}

    def done(alpha: float, reached: bool, **extra) -> dict:
        past = min(settings.alpha_max, alpha * (1 + settings.overshoot))
        if reached and past > alpha and not extra:  # overshoot: past the crossing, where the checks still hold
            measure(past)
            if admissible(past):
                return {**record, **extra, "alpha": past, "reached": True, "overshoot_from": alpha}
        back = alpha * (1 - settings.backoff)
        if extra.get("constrained") and back < alpha:  # back off the edge of the check that limited α
            s = measure(back)
            if admissible(back):
                return {**record, **extra, "alpha": back, "reached": s <= target, "backed_off_from": alpha}
        if trials[-1][0] != round(alpha, 6):
            measure(alpha)  # leave the model at the chosen α
        return {**record, **extra, "alpha": alpha, "reached": reached}

    if start <= target:  # already there: this step needs no change at all
        return done(0.0, True)
    if settings.search == "scan":
        return _scan(measure, admissible, done, trials, checks, target, settings)
    lo, hi = 0.0, settings.alpha_max
    if measure(hi) <= target:
        for _ in range(settings.iterations):
            mid = (lo + hi) / 2
            if measure(mid) <= target:
                hi = mid
            else:
                lo = mid
        reached = True
    else:
        reached = False
    if admissible(hi):
        return done(hi, reached)
    # The α that reaches the target lifts an earlier book: look below it only (a larger α
    # can satisfy every bound by breaking the model), for the largest admissible α
    # (α = 0 is admissible by construction of the bounds).
    limit = hi
    lo = max((t[0] for t, c in zip(trials, checks) if c[2] and t[0] < limit), default=0.0)
    for _ in range(settings.iterations):
        mid = (lo + hi) / 2
        measure(mid)
        if admissible(mid):
            lo = mid
        else:
            hi = mid
    # Of the admissible α tried below the limit: the smallest that reaches the target, else the
    # one that comes closest (the smallest of equals).
    admitted = sorted({(t[0], t[1]) for t, c in zip(trials, checks) if c[2] and t[0] <= limit})
    reaching = [a for a, s in admitted if s <= target]
    alpha = reaching[0] if reaching else min(admitted, key=lambda x: (x[1], x[0]))[0]
    return done(alpha, bool(reaching), constrained=True)


def _scan(measure, admissible, done, trials, checks, target: float, settings) -> dict:
    """``calibrate.search: scan``: α up a geometric grid from ``alpha_min`` (× ``ratio``) until
    the book reaches the target or a bound breaks, then ``iterations`` bisection steps
    between the last grid point and that one. On a score that is noisy in α (a few windows,
    greedy decoding) bisection from alpha_max can stop at any crossing; the scan finds the
    first on the grid, so the step does no more than the target needs.

    ``patience`` k > 0: up to k grid points in a row whose check fails are stepped over and
    the scan goes on; a check that fails at k + 1 points in a row ends it. A check on 2-3
    windows a book can fail at one α and hold again further up (a continuation that flips
    back); without patience the first failure ends the scan. (In experiments/deep every
    failed check lasted four grid points or more, so patience 3 changed no step.) The α taken
    is still one whose own check held, and the floors (``keep``, required with patience)
    refuse the α of a broken model, which would satisfy every upper bound."""
    grid: list[tuple[float, bool]] = []  # (α, its check held) of each grid point
    a, misses = settings.alpha_min, 0
    while True:
        s = measure(a)
        fine = admissible(a)
        grid.append((a, fine))
        if fine and s <= target:
            misses = 0
            break  # the first admissible crossing on the grid
        misses = 0 if fine else misses + 1
        if misses > settings.patience or a >= settings.alpha_max:
            break  # bounds broken at patience + 1 grid points in a row, or the end of the grid
        a = min(a * settings.ratio, settings.alpha_max)
    if grid[-1][1] and trials[-1][1] > target:
        return done(a, False)  # never reached within alpha_max, its bounds held
    if misses:  # refine below the run of failed checks: from the last grid point that held to the first that failed
        hi = grid[-misses][0]
        lo = grid[-misses - 1][0] if len(grid) > misses else 0.0
    else:  # refine the crossing: from the grid point before it
        lo, hi = (grid[-2][0] if len(grid) > 1 else 0.0), a
    step_over = settings.patience > 0 and not misses  # refining a crossing that held: failed checks are stepped over
    for _ in range(settings.iterations):
        mid = (lo + hi) / 2
        above = measure(mid) > target
        fine = admissible(mid)
        if (above and fine) or (step_over and not fine):
            lo = mid  # still short of the target, every bound held (or a failed check patience steps over)
        else:
            hi = mid
    ok = [c[2] for c in checks] if checks else [True] * len(trials)
    admitted = sorted({(t[0], t[1]) for t, fine in zip(trials, ok) if fine and t[0] <= round(hi, 6)})
    reaching = [x for x, y in admitted if y <= target]
    alpha = reaching[0] if reaching else min(admitted, key=lambda x: (x[1], x[0]))[0]
    return done(alpha, bool(reaching), **({"constrained": True} if not all(ok) else {}))


def calibrate_step(model, vector, snapshot, windows, tokenizer, cfg, seed: int, sign: int = -1,
                   level: dict | None = None, earlier: dict[str, list[dict]] | None = None,
                   kept: dict[str, list[dict]] | None = None, previous: dict | None = None) -> dict:
    """Calibrate α for one step on the model the step trained, applying α exactly in place
    (:class:`AlphaView`); the model is left at the chosen α. ``windows``: the removed
    books' calibration windows (:func:`audit_split`), of which a sample is scored, as
    ``calibrate.shifted`` says (:mod:`ssu.recipes.targets`). ``level``: the never-seen
    level's record when ``calibrate.target`` is heldout; ``earlier``: book -> calibration
    windows of the books removed before, checked at every α when ``calibrate.earlier``;
    ``kept``: group -> retain windows, each group's mean greedy score (from the windows' own
    prompts, as evaluation scores it, each window also read at ``calibrate.keep_offsets``) held at
    ``calibrate.keep`` × its value at θ_{t−1} or more when that is set (the step passes one group,
    every retain book, and with ``generic.others`` one per book not yet removed). ``previous``: the
    step before's calibration record; with ``calibrate.keep_from: memorized`` a group read on the
    same windows there keeps that step's anchor (at step 1, its score at θ_0); a group sampled
    differently (more than 4 × ``calibrate.windows`` windows) is anchored anew at θ_{t−1}, as the
    record's ``anchors`` show."""
    c = cfg.calibrate
    view = AlphaView(model, vector, snapshot, sign)
    windows = sample_windows(windows, c.windows, seed)
    earlier = {b: sample_windows(ws, c.windows, seed) for b, ws in (earlier or {}).items()} if c.earlier else {}
    # a group is several books: up to 4 x windows of them
    kept = {b: sample_windows(ws, 4 * c.windows, seed) for b, ws in (kept or {}).items()} if c.keep else {}
    model.eval()

    def score(a: float) -> float:
        view.apply(a)
        return mean_score(model, tokenizer, windows, cfg.train.max_length, c.shifted, c.offsets)

    def check(a: float) -> dict[str, float]:  # at the α score() just applied
        seen = {b: mean_score(model, tokenizer, ws, cfg.train.max_length, c.shifted, c.offsets)
                for b, ws in earlier.items()}
        # a kept book as evaluation scores it: greedy from its own prompts (memorized: ~1.0), each
        # window also read at keep_offsets -- more readings a book, the later ones lower on a window
        # memorized from its own start (experiments/deep/README.md)
        return {**seen, **{b: mean_score(model, tokenizer, ws, cfg.train.max_length, offsets=c.keep_offsets)
                           for b, ws in kept.items()}}

    # an earlier book's own bar: the absolute target when there is one, else where it is now
    levels = {b: absolute_target(c, 0.0, level) if c.target == "heldout" or c.rouge is not None else 0.0
              for b in earlier}
    anchors = None
    if c.keep_from == "memorized":
        before = previous or {}
        carried, ids = before.get("anchors", {}), before.get("kept_window_ids", {})
        anchors = {b: carried[b] for b, ws in kept.items() if b in carried and ids.get(b) == _ids(ws)}
    record = calibrate_alpha(score, c, target=lambda start: absolute_target(c, start, level),
                             earlier=check if earlier or kept else None, levels=levels,
                             keep={b: c.keep for b in kept}, anchors=anchors)
    extra = {"never_seen": level} if level is not None else {}
    if earlier:
        extra["earlier_window_ids"] = {b: _ids(ws) for b, ws in earlier.items()}
    if kept:
        extra["kept_window_ids"] = {b: _ids(ws) for b, ws in kept.items()}
    return {**record, **extra, "windows": len(windows), "window_ids": _ids(windows)}


def _ids(windows: Sequence[dict]) -> list[list]:
    """[book, window] of each window scored, so the record shows calibration kept off the audit windows."""
    return [[w["book"], int(w["window"])] for w in windows]


class EarlyStop:
    """Stop a step's fine-tune at the first epoch whose vector already reaches the target.

    After each epoch the vector so far (``vector_now()``: sign and regularizers applied,
    as the step will store it) is applied at ``alpha`` -- ``calibrate.alpha_max`` when α
    is calibrated afterwards (so the bisection can still reach the target), else the
    run's α -- and the removed book's ROUGE-L is measured on the calibration windows;
    the trained weights are then restored exactly and training ends if the score is at
    or under the target (the same target as :func:`calibrate_alpha`'s, from the score at
    θ_{t−1}). Fewer epochs, a smaller change: the step does no more training than the
    target needs. Every check is recorded.
    """

    def __init__(self, model, snapshot, windows, tokenizer, cfg, seed: int, sign: int, vector_now,
                 level: dict | None = None):
        self.model, self.snapshot, self.tokenizer, self.cfg, self.sign = model, snapshot, tokenizer, cfg, sign
        self.vector_now, self.level = vector_now, level
        self.windows = sample_windows(windows, cfg.calibrate.windows, seed)
        self.alpha = cfg.calibrate.alpha_max if cfg.calibrate.enabled else cfg.alpha
        self.checks: list[list[float]] = []
        self.target = self.start = None
        self.stopped_at: int | None = None

    def __call__(self, epoch: int, stats: dict) -> bool:
        if epoch >= self.cfg.train.epochs:  # the last epoch ends the fine-tune anyway
            return False
        view = AlphaView(self.model, self.vector_now(), self.snapshot, self.sign, keep_trained=True)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.target is None:
                view.apply(0.0)
                self.start = mean_score(self.model, self.tokenizer, self.windows, self.cfg.train.max_length,
                                        self.cfg.calibrate.shifted, self.cfg.calibrate.offsets)
                self.target = absolute_target(self.cfg.calibrate, self.start, self.level)
            view.apply(self.alpha)
            score = mean_score(self.model, self.tokenizer, self.windows, self.cfg.train.max_length,
                               self.cfg.calibrate.shifted, self.cfg.calibrate.offsets)
        finally:
            view.restore()
            self.model.train(was_training)
        self.checks.append([epoch, round(score, 6)])
        if score <= self.target:
            self.stopped_at = epoch
        return self.stopped_at is not None

    def record(self) -> dict:
        return {"alpha_tested": self.alpha, "target": None if self.target is None else round(self.target, 6),
                "score_at_0": None if self.start is None else round(self.start, 6), "checks": self.checks,
                "stopped_at_epoch": self.stopped_at, "windows": len(self.windows), "window_ids": _ids(self.windows)}
