"""How much of a book a model still reproduces: greedy-continuation ROUGE-L, per book or overall.

The evaluation's own measure in its smallest form, for the code that needs one number
quickly and often -- memorization's stopping check, α calibration, early stop -- rather
than the full set of rows ``ssu eval`` writes. Only the prompt is given; the budget is
the reference continuation's length (:func:`ssu.eval.generation.generate_continuations`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssu.eval.generation import generate_continuations
from ssu.metrics import get_metric


def rouge_l_scores(model, tokenizer, windows: Sequence[dict], max_length: int = 512) -> list[float]:
    """Greedy-continuation ROUGE-L F1 of each window."""
    rouge = get_metric("rougeL_f").fn
    outputs = generate_continuations(model, tokenizer, windows, max_length=max_length)
    return [float(rouge(o, w["continuation"])) for o, w in zip(outputs, windows)]


def mean_rouge_l(model, tokenizer, windows: Sequence[dict], max_length: int = 512) -> float:
    """Mean greedy-continuation ROUGE-L F1 over ``windows``."""
    return float(np.mean(rouge_l_scores(model, tokenizer, windows, max_length)))


def rouge_by_book(model, tokenizer, windows: Sequence[dict], max_length: int = 512) -> dict[str, float]:
    """Mean greedy-continuation ROUGE-L F1 per book."""
    scores: dict[str, list[float]] = {}
    for w, s in zip(windows, rouge_l_scores(model, tokenizer, windows, max_length)):
        scores.setdefault(w["book"], []).append(s)
    return {b: float(np.mean(v)) for b, v in scores.items()}
