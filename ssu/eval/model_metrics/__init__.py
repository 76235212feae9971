"""Model-level metrics: numbers computed from the model itself, not from its generations.

Each is one registered file here (``@MODEL_METRICS.register(name, outputs=...)`` on a
class): perplexity per book, membership-inference AUCs, lm-eval tasks. The run config
names them with their parameters, ``eval.model_metrics: [perplexity, {name: lm_eval,
args: {tasks: [mmlu]}}]``; a metric's ``Args`` dataclass declares those parameters and
the evaluate recipe builds ``cls(args)``. An instance has

- ``missing(ctx) -> bool``: whether any of its rows for this step is not in
  ``results.jsonl`` yet (decided without loading the model);
- ``compute(ctx) -> list[dict]``: its new rows (``step, book, set, metric, value,
  ci_low, ci_high, n``; optional ``stderr``, ``higher_is_better``).

``outputs`` maps each row's metric name to ``higher_is_better``, which report,
compare and the notebook read; a metric whose names are only known when it runs
(lm-eval) puts ``higher_is_better`` in each row instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ssu.registry import Registry, import_builtins


@dataclass
class ModelContext:
    """What a model metric works from; the model and the log-probabilities load on first use."""

    config: Any  # RunConfig
    step: int
    windows: list[dict]  # tagged with "set"
    have: set  # (step, book, set, metric) of the rows already in results.jsonl
    goals: dict[str, str | None]  # set -> goal (ssu.eval.sets)
    load: Callable[[], tuple[Any, Any]]  # -> (model, tokenizer)
    _loaded: tuple | None = None
    _logprobs: list | None = None
    cache: dict = field(default_factory=dict)  # what one metric computes and another may reuse

    @property
    def model(self):
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded[0]

    @property
    def tokenizer(self):
        self.model  # noqa: B018 - loads both
        return self._loaded[1]

    @property
    def logprobs(self) -> list:
        """Per-window token log-probabilities (ssu.eval.logprobs), computed once per evaluation."""
        if self._logprobs is None:
            from ssu.eval.logprobs import token_logprobs

            self._logprobs = token_logprobs(self.model, self.tokenizer, self.windows, self.config.train.max_length,
                                            batch_size=self.config.eval.batch_size)
        return self._logprobs

    def has(self, book: str, set_: str, metric: str) -> bool:
        return (self.step, book, set_, metric) in self.have


class ModelMetric:
    """Base of the model-level metrics: ``cls(args)``, with ``args`` an instance of its ``Args``."""

    name: str = ""
    description: str = ""
    outputs: dict[str, bool] = {}
    Args: type | None = None

    def __init__(self, args: Any = None):
        self.args = args

    def missing(self, ctx: ModelContext) -> bool:
        raise NotImplementedError

    def compute(self, ctx: ModelContext) -> list[dict]:
        raise NotImplementedError


MODEL_METRICS: Registry[type[ModelMetric]] = Registry("model metric", "model-metrics")
LM_EVAL_PREFIX = "lm_eval:"  # rows named lm_eval:<task>:<metric> (lm_eval.py)


def higher_is_better(metric: str, row: dict | None = None) -> bool | None:
    """Direction of a results row's metric: text metrics, model-metric outputs, or the row's own."""
    from ssu.metrics import METRICS

    if metric in METRICS:
        return METRICS.get(metric).higher_is_better
    for m in MODEL_METRICS:
        if metric in m.outputs:
            return m.outputs[metric]
    if metric.startswith("probe:"):  # ROUGE-L or extraction under a probe (ssu.eval.probes)
        return True
    return None if row is None else row.get("higher_is_better")


def is_model_metric(metric: str) -> bool:
    """Whether a results row comes from a model metric (rather than from generations)."""
    return metric.startswith(LM_EVAL_PREFIX) or any(metric in m.outputs for m in MODEL_METRICS)


import_builtins(__name__)
