"""Probes: is a removed book gone, or only hidden from the exact prompt and greedy decoding?

Greedy ROUGE-L from the training prompt can be low while the text comes back with a
shifted prompt, with sampling, after a few optimizer steps on related text, or once
the weights are quantized for deployment (Łucki et al. 2024; Hu et al., ICLR 2025;
Zhang et al., ICLR 2025). Each probe is one registered file here
(``@PROBES.register(name, outputs={...})`` on a class with an ``Args`` dataclass),
named by the run config (``eval.probes: [shifted, {name: sampled, args: {k: 8}}]``)
or by ``ssu eval RUN T --probe NAME[,NAME]``.

A probe scores each window it is given with one or more per-window values
(:class:`Score`: ROUGE-L F1 of its continuation against the reference, or a 0/1
outcome). ``outputs`` maps each of its metric names to whether the value counts in
the *worst case*: the per-window maximum over greedy decoding and every worst-case
output run, the removal a rights holder can rely on. The probe recipe
(``ssu/recipes/probe.py``) writes the scores to ``step_T/probes.jsonl`` and one row per
(book, set, metric) to ``results.jsonl`` with n and a 95 % interval, like every metric.

``needs_fresh_model``: the probe changes the weights (quantization, relearning) and
gets a model of its own, loaded anew, instead of the one the read-only probes share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ssu.registry import Registry, import_builtins

WORST = "probe:worst"  # the per-window maximum over greedy and the worst-case outputs


@dataclass
class ProbeContext:
    """What a probe works from."""

    config: Any  # the run's RunConfig (max_length, batch sizes, seed)
    step: int
    windows: list[dict]  # tagged with "set"; removed books on their audit windows
    seed: int
    progress: bool = False
    # A fresh model at this step (for probes that change the weights); set by the recipe.
    load: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Score:
    """One window's value under one probe output."""

    metric: str
    set: str
    book: str
    window: int
    value: float
    detail: dict | None = None  # e.g. the variant or sample that scored highest

    def row(self) -> dict:
        out = {"metric": self.metric, "set": self.set, "book": self.book, "window": self.window,
               "value": round(float(self.value), 6)}
        if self.detail:
            out["detail"] = self.detail
        return out


class Probe:
    """Base of the probes: ``cls(args)``; ``scores(model, tokenizer, ctx) -> [Score]``."""

    name: str = ""
    description: str = ""
    outputs: dict[str, bool] = {}  # metric -> counts in the worst case
    needs_fresh_model: bool = False
    Args: type | None = None

    def __init__(self, args: Any = None):
        self.args = args

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        raise NotImplementedError


PROBES: Registry[type[Probe]] = Registry("probe", "probes")


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1, the evaluation's own metric (``rougeL_f``)."""
    from ssu.metrics import get_metric

    return float(get_metric("rougeL_f").fn(output, reference))


def greedy_scores(model, tokenizer, ctx: ProbeContext, metric: str, detail: dict | None = None) -> list[Score]:
    """Greedy ROUGE-L of every window of ``ctx`` on ``model``, as ``metric`` (the probes that change
    the model -- quantized, rounded, relearned -- and then decode as the evaluation does)."""
    from ssu.eval.generation import generate_continuations

    outputs = generate_continuations(model, tokenizer, ctx.windows, batch_size=ctx.config.eval.batch_size,
                                     max_length=ctx.config.train.max_length, progress=ctx.progress,
                                     tokens_per_batch=ctx.config.eval.tokens_per_batch)
    return [Score(metric, w["set"], w["book"], w["window"], rouge_l(o, w["continuation"]), detail)
            for w, o in zip(ctx.windows, outputs)]


def worst_case_metrics() -> set[str]:
    """Every registered output that counts in the worst case."""
    return {m for p in PROBES for m, worst in p.outputs.items() if worst}


import_builtins(__name__)
