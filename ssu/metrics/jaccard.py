"""Jaccard similarity of character 3-gram shingles (CoTaEval's MinHash metric, computed exactly).

Registered:

- ``shingle_jaccard`` (higher = more similar, in [0, 1]).

Text is normalized to lower-cased words without punctuation joined by single spaces
(spaces are kept so shingles see word boundaries: "a cat" and "acat" differ), then cut
into overlapping character 3-grams. A text with fewer than 3 characters has no
shingles and scores 0.0.

CoTaEval reports a MinHash *estimate* of this quantity. MinHash pays off when one
text is compared against very many (a generation against a whole library, via
locality-sensitive hashing); for one prediction/reference pair the exact value is a
set intersection of a few hundred shingles -- cheaper than 128 hash permutations,
free of estimation error, and independent of any hash seed.
"""

from __future__ import annotations

from ssu.metrics._text import normalize_words
from ssu.metrics.registry import register_metric

SHINGLE = 3


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Distinct character ``k``-grams of the normalized text."""
    s = " ".join(normalize_words(text))
    return {s[i : i + k] for i in range(len(s) - k + 1)}


@register_metric(
    "shingle_jaccard",
    higher_is_better=True,
    description="Exact Jaccard of character 3-gram shingles (what CoTaEval's MinHash estimates).",
)
def shingle_jaccard(prediction: str, reference: str, k: int = SHINGLE) -> float:
    """Exact Jaccard similarity of the two shingle sets (0.0 if either is empty)."""
    a, b = shingles(prediction, k), shingles(reference, k)
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)
