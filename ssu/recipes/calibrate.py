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
from ssu.eval.memorization import mean_rouge_l

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


def rouge_l(model, tokenizer, windows: Sequence[dict], max_length: int) -> float:
    """Mean greedy-continuation ROUGE-L F1 (the prompt alone), the evaluation's own metric."""
    return mean_rouge_l(model, tokenizer, windows, max_length)


def calibrate_alpha(score: Callable[[float], float], settings) -> dict:
    """Smallest α in [0, alpha_max] (to the bisection's resolution) with ``score(α)`` <= target.

    ``settings``: the run config's ``calibrate`` (:class:`ssu.config.CalibrateSettings`).
    ``score(α)`` applies α and measures. Returns the record the manifest keeps: the
    chosen α, the target, the score at α = 0, whether the target was reached, and
    every trial as ``[α, score]``; the model is left at the chosen α.
    """
    trials: list[list[float]] = []

    def measure(a: float) -> float:
        s = score(a)
        trials.append([round(a, 6), round(s, 6)])
        return s

    start = measure(0.0)
    target = settings.rouge if settings.rouge is not None else settings.fraction * start
    record = {"target": round(target, 6), "score_at_0": round(start, 6), "trials": trials}
    if start <= target:  # already there: this step needs no change at all
        return {**record, "alpha": 0.0, "reached": True}
    if measure(settings.alpha_max) > target:
        return {**record, "alpha": settings.alpha_max, "reached": False}
    lo, hi = 0.0, settings.alpha_max
    for _ in range(settings.iterations):
        mid = (lo + hi) / 2
        if measure(mid) <= target:
            hi = mid
        else:
            lo = mid
    if trials[-1][0] != round(hi, 6):
        measure(hi)  # leave the model at the chosen α
    return {**record, "alpha": hi, "reached": True}


def calibrate_step(model, vector, snapshot, windows, tokenizer, cfg, seed: int, sign: int = -1) -> dict:
    """Calibrate α for one step on the model the step trained, applying α exactly in place
    (:class:`AlphaView`); the model is left at the chosen α. ``windows``: the removed
    books' calibration windows (:func:`audit_split`), of which a sample is scored."""
    view = AlphaView(model, vector, snapshot, sign)
    windows = sample_windows(windows, cfg.calibrate.windows, seed)
    model.eval()

    def score(a: float) -> float:
        view.apply(a)
        return rouge_l(model, tokenizer, windows, cfg.train.max_length)

    return {**calibrate_alpha(score, cfg.calibrate), "windows": len(windows), "window_ids": _ids(windows)}


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

    def __init__(self, model, snapshot, windows, tokenizer, cfg, seed: int, sign: int, vector_now):
        self.model, self.snapshot, self.tokenizer, self.cfg, self.sign = model, snapshot, tokenizer, cfg, sign
        self.vector_now = vector_now
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
                self.start = rouge_l(self.model, self.tokenizer, self.windows, self.cfg.train.max_length)
                c = self.cfg.calibrate
                self.target = c.rouge if c.rouge is not None else c.fraction * self.start
            view.apply(self.alpha)
            score = rouge_l(self.model, self.tokenizer, self.windows, self.cfg.train.max_length)
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
