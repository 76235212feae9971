"""Registry of text metrics, addressed by name.

Evaluation configs name the metrics they want ("rougeL_recall", "lcs_chars", ...); this
module's :data:`METRICS` (a :class:`ssu.registry.Registry`, like every kind of component)
maps those names to functions plus the metadata a report needs: whether higher
is better (so plots and tables can say "lower is better for forgotten books") and how
per-item values are aggregated. Adding a metric is one file that calls
:func:`register_metric`; ``ssu.metrics`` imports every built-in file
(:func:`ssu.registry.import_builtins`) so they are all registered on import.

Every metric has the same signature, ``fn(prediction, reference) -> float``. The order
is fixed here once because rouge-score's own API takes the reference *first*; callers
of this registry never have to remember that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ssu.registry import Registry, UnknownNameError

MetricFn = Callable[[str, str], float]

# Aggregations that ``ssu.metrics.aggregate.aggregate`` knows how to bootstrap.
AGGREGATIONS = ("mean", "median")


@dataclass(frozen=True)
class Metric:
    """A registered metric: a pure ``(prediction, reference) -> float`` and its metadata."""

    name: str
    fn: MetricFn
    higher_is_better: bool
    aggregation: str = "mean"
    description: str = ""

    def __call__(self, prediction: str, reference: str) -> float:
        return float(self.fn(prediction, reference))


UnknownMetricError = UnknownNameError  # the one unknown-name error of every registry
METRICS: Registry[Metric] = Registry("text metric", "metrics")


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    aggregation: str = "mean",
    description: str = "",
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering ``fn(prediction, reference) -> float`` as the text metric ``name``.

    The function is returned unchanged so it stays importable and testable directly;
    the registry (:data:`METRICS`) holds a :class:`Metric` with its metadata.

    Raises:
        ValueError: ``name`` is already registered (silently replacing a metric would
            make two runs with the same config compute different numbers), or
            ``aggregation`` is not one of :data:`AGGREGATIONS`.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}"
        )

    def decorator(fn: MetricFn) -> MetricFn:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        METRICS.add(name, Metric(name, fn, higher_is_better, aggregation, doc))
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    """The metric registered as ``name``; :class:`UnknownNameError` (one line, closest name) otherwise."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    """Names of all registered metrics, sorted."""
    return METRICS.names()


def compute(
    names: str | Iterable[str],
    predictions: Sequence[str],
    references: Sequence[str],
) -> dict[str, list[float]]:
    """Score every (prediction, reference) pair with each named metric.

    Returns per-item values (not aggregates) so the caller can bootstrap confidence
    intervals or inspect single windows.

    Raises:
        ValueError: ``predictions`` and ``references`` differ in length (zip would
            silently drop the tail).
        UnknownMetricError: a name is not registered; checked before any scoring.
    """
    if isinstance(names, str):
        names = [names]
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references"
        )
    metrics = [get_metric(n) for n in names]
    return {m.name: [m(p, r) for p, r in zip(predictions, references)] for m in metrics}
