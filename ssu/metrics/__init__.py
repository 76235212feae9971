"""Text metrics for copying, membership inference and aggregation (no model code).

- Copying metrics, ``fn(prediction, reference) -> float``, registered by name:
  ROUGE (``rouge.py``), common substrings (``substring.py``), edit distance
  (``levenshtein.py``, rapidfuzz), verbatim n-grams (``ngram.py``), shingle Jaccard (``jaccard.py``).
  Importing this package registers them all; use :func:`get_metric`,
  :func:`list_metrics` and :func:`compute`.
- Membership inference on per-token log-probabilities (``privacy.py``).
- Bootstrap confidence intervals for per-item values (``aggregate.py``).
"""

from ssu.metrics.aggregate import aggregate
from ssu.metrics.jaccard import shingle_jaccard
from ssu.metrics.levenshtein import edit_distance
from ssu.metrics.ngram import ngram_overlap
from ssu.metrics.privacy import loss_score, mia_auc, min_k_score, priv_leak, zlib_score
from ssu.metrics.registry import (
    METRICS,
    Metric,
    UnknownMetricError,
    compute,
    get_metric,
    list_metrics,
    register_metric,
)
from ssu.metrics.rouge import rouge_scores
from ssu.metrics.substring import (
    accumulated_common_words,
    longest_common_substring_chars,
    longest_common_words,
)
from ssu.registry import import_builtins

# Every metric file registers itself on import; the registry is the public way to reach
# them, a few helpers are re-exported for direct use.
import_builtins(__name__)

__all__ = [
    "METRICS",
    "Metric",
    "UnknownMetricError",
    "accumulated_common_words",
    "aggregate",
    "compute",
    "edit_distance",
    "get_metric",
    "list_metrics",
    "longest_common_substring_chars",
    "longest_common_words",
    "loss_score",
    "mia_auc",
    "min_k_score",
    "ngram_overlap",
    "priv_leak",
    "register_metric",
    "rouge_scores",
    "shingle_jaccard",
    "zlib_score",
]
