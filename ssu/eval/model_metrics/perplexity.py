"""``perplexity``: exp of the mean per-window NLL, per book (utility on unseen and kept text)."""

from __future__ import annotations

import math

import numpy as np

from ssu.eval.model_metrics import MODEL_METRICS, ModelContext, ModelMetric
from ssu.metrics import aggregate


def saturating_exp(x: float) -> float:
    """exp that saturates: a wrecked model's mean NLL (> 709) is a perplexity of inf, not a crash."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _books(ctx: ModelContext) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for i, w in enumerate(ctx.windows):
        out.setdefault((w["book"], w["set"]), []).append(i)
    return out


@MODEL_METRICS.register("perplexity", outputs={"perplexity": False}, description="perplexity per book")
class Perplexity(ModelMetric):
    def missing(self, ctx: ModelContext) -> bool:
        return any(not ctx.has(b, s, "perplexity") for b, s in _books(ctx))

    def compute(self, ctx: ModelContext) -> list[dict]:
        rows = []
        for (book, set_), idx in sorted(_books(ctx).items()):
            if ctx.has(book, set_, "perplexity"):
                continue
            # The bootstrap CI is taken on the NLL scale; exp is monotone, so it maps over exactly.
            agg = aggregate([float(np.mean(-ctx.logprobs[i])) for i in idx], seed=ctx.config.seed)
            rows.append({"step": ctx.step, "book": book, "set": set_, "metric": "perplexity",
                         "value": saturating_exp(agg["value"]), "ci_low": saturating_exp(agg["ci_low"]),
                         "ci_high": saturating_exp(agg["ci_high"]), "n": len(idx)})
        return rows
