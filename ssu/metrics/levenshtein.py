"""Edit-distance similarity (CoTaEval's Levenshtein metric, turned into a similarity).

Registered:

- ``levenshtein_similarity`` (higher = more copying, in [0, 1]):
  ``1 - edit_distance(p, r) / max(len(p), len(r))`` over *characters* of the
  normalized texts (lower-cased, whitespace and punctuation removed, as ``lcs_chars``).

The distance itself is rapidfuzz's (C++, bit-parallel): the same unit-cost
Levenshtein distance a hand-written dynamic program computes, much faster.

Why characters rather than words: a model that copies with small spelling or
inflection changes ("colour"/"color", "walked"/"walks") is still close at the
character level, while word-level distance counts each such word as a full edit.
Why a similarity: every other copying metric here is "higher = more copied", so one
direction keeps tables and plots readable; :func:`edit_distance` stays available for
the raw distance. If either normalized text is empty the similarity is 0.0 (there is
no copied text to measure), which also covers an empty prediction.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rapidfuzz.distance import Levenshtein

from ssu.metrics._text import normalize_chars
from ssu.metrics.registry import register_metric


def edit_distance(a: str | Sequence[Hashable], b: str | Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost insert, delete, substitute) of two strings (per
    character) or two sequences of hashable tokens (per token)."""
    return int(Levenshtein.distance(a, b))


@register_metric(
    "levenshtein_similarity",
    higher_is_better=True,
    description="1 - character edit distance / max length, on normalized text.",
)
def levenshtein_similarity(prediction: str, reference: str) -> float:
    """``1 - edit_distance / max(len)`` over normalized characters; 0.0 if either is empty."""
    p, r = normalize_chars(prediction), normalize_chars(reference)
    if not p or not r:
        return 0.0
    return 1.0 - edit_distance(p, r) / max(len(p), len(r))
