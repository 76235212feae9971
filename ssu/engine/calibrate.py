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

The α is applied exactly, in place, by the caller's ``apply_alpha`` (a LoRA step
scales its adapter, a full fine-tune sets θ_{t−1} + α·v in its float32 weights), so
calibration adds generation passes but no copy of the model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np


def sample_windows(windows: Sequence[dict], n: int, seed: int) -> list[dict]:
    if len(windows) <= n:
        return list(windows)
    return random.Random(seed).sample(list(windows), n)


def rouge_l(model, tokenizer, windows: Sequence[dict], max_length: int) -> float:
    """Mean greedy-continuation ROUGE-L F1 (the prompt alone), the evaluation's own metric."""
    from ssu.eval.generation import generate_continuations
    from ssu.metrics import get_metric

    rouge = get_metric("rougeL_f").fn
    outputs = generate_continuations(model, tokenizer, windows, max_length=max_length)
    return float(np.mean([rouge(o, w["continuation"]) for o, w in zip(outputs, windows)]))


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


def calibrate_step(model, vector, snapshot, fs, tokenizer, cfg, seed: int, sign: int = -1) -> dict:
    """Calibrate α for one step on the model the step trained, applying α exactly in place.

    ``sign`` is the method's (v = sign·Δ). LoRA (``snapshot`` is None): the step's adapter
    scaling becomes sign·α times its own, so the model is θ_{t−1} + α·v with no weight
    touched. Full fine-tune: every trained weight is set to θ_{t−1} + α·v in its
    (float32) dtype from the pre-step snapshot.
    """
    import torch

    from ssu.engine.precision import STEP_ADAPTER

    if snapshot is None:
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        layers = [m for m in base.modules() if isinstance(m, LoraLayer) and STEP_ADAPTER in m.scaling]
        own = [m.scaling[STEP_ADAPTER] for m in layers]

        def apply(a: float) -> None:
            for m, s in zip(layers, own):
                m.scaling[STEP_ADAPTER] = s * sign * a
    else:
        params = dict(model.named_parameters())

        def apply(a: float) -> None:
            with torch.no_grad():
                for k in vector.keys():
                    p = params[k]
                    p.copy_(snapshot[k].to(p.device) + a * vector[k].to(p.device))

    windows = sample_windows(fs.windows, cfg.calibrate.windows, seed)
    model.eval()

    def score(a: float) -> float:
        apply(a)
        return rouge_l(model, tokenizer, windows, cfg.train.max_length)

    return {**calibrate_alpha(score, cfg.calibrate), "windows": len(windows)}
