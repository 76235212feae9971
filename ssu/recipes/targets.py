"""What a step's calibration aims at, and what it must not undo.

Three choices of the run config's ``calibrate`` block, used by
:func:`ssu.recipes.calibrate.calibrate_step`:

- **the score** (``shifted``): a window's greedy ROUGE-L from its training prompt, or its
  worst case over prompt variants as the ``shifted`` probe makes them (the prompt's tail,
  the boundary moved earlier or later, ...). Calibrating on the worst case aims at what
  the evidence reports, not at the one prompt the step was trained on.
- **the target** (``target``): ``fraction`` × the book's score at θ_{t−1} (the stable
  recipe's), or ``heldout``: the level of text the model never saw -- the same score on
  held-out windows of the memorized model -- plus ``margin``. The level is measured once,
  at the run's first calibrated step (θ_0 when that is step 1), recorded in the manifest
  and reused, so a model that degrades does not lower its own bar.
- **the constraints** (``earlier``): the books removed at earlier steps are scored at
  every α tried, on their own calibration windows (the split their step recorded: their
  audit windows stay unseen), and an α that lifts one over its bound is never taken
  (:func:`ssu.recipes.calibrate.calibrate_alpha`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssu.eval.memorization import rouge_l_scores
from ssu.eval.probes.shifted import variant

TAIL_WORDS, SHIFT_WORDS = 20, 5  # the shifted probe's defaults


def slide(w: dict, k: int) -> dict:
    """The window's text read ``k`` words later: the prompt loses its first k words and gains the
    continuation's first k; the reference is the rest of the continuation."""
    p, c = w["prompt"].split(), w["continuation"].split()
    k = min(k, len(c) - 1)
    return {**w, "prompt": " ".join(p[k:] + c[:k]), "continuation": " ".join(c[k:])}


def window_scores(model, tokenizer, windows: Sequence[dict], max_length: int,
                  variants: Sequence[str] = (), offsets: Sequence[int] = (0,)) -> list[float]:
    """Per window: greedy ROUGE-L from its prompt -- the mean over the prompts read at each of
    ``offsets`` (words; more samples of the same text, for a steadier calibration) -- or, with
    ``variants``, the max of that and each prompt variant's score; one batched generation."""
    n = len(windows)
    rows = [slide(w, k) if k else dict(w) for k in offsets for w in windows]
    for name in variants:
        for w in windows:
            prompt, reference = variant(name, w["prompt"], w["continuation"], TAIL_WORDS, SHIFT_WORDS)
            rows.append({**w, "prompt": prompt, "continuation": reference})
    flat = rouge_l_scores(model, tokenizer, rows, max_length) if rows else []
    m = len(offsets) * n
    read = [float(np.mean(flat[i:m:n])) for i in range(n)]
    return [max([read[i], *flat[m + i::n]]) for i in range(n)]


def mean_score(model, tokenizer, windows: Sequence[dict], max_length: int, variants: Sequence[str] = (),
               offsets: Sequence[int] = (0,)) -> float:
    return float(np.mean(window_scores(model, tokenizer, windows, max_length, variants, offsets))) \
        if windows else 0.0


def never_seen_level(model, tokenizer, heldout: Sequence[dict], cfg, step: int) -> dict:
    """The record of the never-seen level: the calibration score on held-out windows of ``model``."""
    from ssu.errors import SSUError

    if not heldout:
        raise SSUError("calibrate.target: heldout needs held-out books (heldout/*.txt in the prepared data)")
    c = cfg.calibrate
    value = mean_score(model, tokenizer, heldout, cfg.train.max_length, c.shifted, c.offsets)
    return {"level": round(value, 6), "measured_at_step": step, "windows": len(heldout),
            "shifted": list(c.shifted), "offsets": list(c.offsets)}


def recorded_level(manifest_steps: dict, step: int) -> dict | None:
    """The never-seen level an earlier step of the run measured, if any."""
    for t in sorted(int(k) for k in manifest_steps):
        level = (manifest_steps[str(t)].get("calibration") or {}).get("never_seen")
        if t < step and level:
            return level
    return None


def absolute_target(settings, start: float, level: dict | None) -> float:
    """The target ROUGE-L: ``rouge`` if set, else the never-seen level + margin, else fraction × start."""
    if settings.rouge is not None:
        return settings.rouge
    if settings.target == "heldout":
        return level["level"] + settings.margin
    return settings.fraction * start


def earlier_calibration_windows(manifest_steps: dict, step: int, windows: Sequence[dict]) -> dict[str, list[dict]]:
    """Book -> its calibration windows, for every book removed at an earlier step whose step
    recorded a split; books without one are left out (their step kept no windows apart)."""
    out: dict[str, list[dict]] = {}
    for t in sorted(int(k) for k in manifest_steps):
        split = manifest_steps[str(t)].get("split") if t < step else None
        for book, sides in (split or {}).items():
            ids = set(sides["calibration"])
            out[book] = [w for w in windows if w["book"] == book and int(w["window"]) in ids]
    return {b: ws for b, ws in out.items() if ws}
