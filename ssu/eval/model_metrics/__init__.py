"""Model-level metrics: numbers computed from the model itself, not from its generations.

Each is one registered file here (``register_model_metric``): perplexity per book,
membership-inference AUCs, lm-eval tasks; probes can follow. A metric is a class with

- ``missing(ctx) -> bool``: whether any of its rows for this step is not in
  ``results.jsonl`` yet (decided without loading the model);
- ``compute(ctx) -> list[dict]``: its new rows (``step, book, set, metric, value,
  ci_low, ci_high, n``; optional ``stderr``, ``higher_is_better``).

``outputs`` maps each row's metric name to ``higher_is_better``, which report,
compare and the notebook read; a metric whose names are only known when it runs
(lm-eval) puts ``higher_is_better`` in each row instead. The run's config names its
metrics in ``eval.model_metrics``; ``lm_eval`` runs whenever ``eval.lm_eval_tasks``
is non-empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssu.eval.registry import Registry


@dataclass
class ModelContext:
    """What a model metric works from; the model and the log-probabilities load on first use."""

    config: Any  # RunConfig
    step: int
    windows: list[dict]  # tagged with "set"
    have: set  # (step, book, set, metric) of the rows already in results.jsonl
    goals: dict[str, str | None]  # set -> goal (ssu.eval.sets)
    load: Callable[[], tuple[Any, Any]]  # -> (model, tokenizer)
    options: dict[str, Any] = field(default_factory=dict)  # per call, e.g. lm-eval tasks from the CLI
    _loaded: tuple | None = None
    _logprobs: list | None = None

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


@dataclass(frozen=True)
class ModelMetric:
    name: str
    impl: Any  # an instance with missing(ctx) and compute(ctx)
    outputs: dict[str, bool]
    description: str = ""


MODEL_METRICS: Registry[ModelMetric] = Registry("model metric")
LM_EVAL_PREFIX = "lm_eval:"  # rows named lm_eval:<task>:<metric> (lm_eval.py)


def register_model_metric(name: str, *, outputs: dict[str, bool], description: str = ""):
    """Class decorator registering a model metric (see the module docstring)."""

    def decorator(cls):
        doc = description or (cls.__doc__ or "").strip().split("\n")[0]
        MODEL_METRICS.add(name, ModelMetric(name, cls(), dict(outputs), doc))
        return cls

    return decorator


def get_model_metric(name: str) -> ModelMetric:
    return MODEL_METRICS.get(name)


def list_model_metrics() -> list[str]:
    return MODEL_METRICS.names()


def higher_is_better(metric: str, row: dict | None = None) -> bool | None:
    """Direction of a results row's metric: text metrics, model-metric outputs, or the row's own."""
    from ssu.metrics import get_metric, list_metrics

    if metric in list_metrics():
        return get_metric(metric).higher_is_better
    for m in MODEL_METRICS:
        if metric in m.outputs:
            return m.outputs[metric]
    return None if row is None else row.get("higher_is_better")


def is_model_metric(metric: str) -> bool:
    """Whether a results row comes from a model metric (rather than from generations)."""
    return metric.startswith(LM_EVAL_PREFIX) or any(metric in m.outputs for m in MODEL_METRICS)


def _import_builtins() -> None:
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem != "__init__":
            __import__(f"{__name__}.{path.stem}")


_import_builtins()
