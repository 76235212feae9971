"""Verbatim-copy metrics based on common substrings (CoTaEval's LCS and ACS family).

ROUGE-L rewards a long common *subsequence*, which can be assembled from scattered
words; these metrics instead reward *contiguous* copying, which is what a copyright
claim is about.

Registered (all higher = more copying, each in [0, 1]):

- ``lcs_chars``: longest common substring in characters after lower-casing and removing
  whitespace and punctuation, divided by the normalized reference length.
- ``lcs_words``: longest common contiguous run of words (lower-cased, punctuation
  removed), divided by the number of reference words.
- ``acs_words``: accumulated common substrings: total length of non-overlapping common
  word runs of at least 3 words, picked greedily longest first, divided by the number
  of reference words.

Why divide by the reference: the question is "how much of the protected text came
out", so the reference is the fixed denominator; it also keeps the value in [0, 1]
whatever the generation length. CoTaEval reports raw lengths; those are available as
:func:`longest_common_substring_chars`, :func:`longest_common_words` and
:func:`accumulated_common_words`. An empty side (after normalization) scores 0.0.

Why hand-written: rapidfuzz (used for the edit distance) computes edit distances and
the longest common *subsequence*, not the longest common *substring*; difflib's
``find_longest_match`` drops frequent characters as "junk" by default and is quadratic
in pure Python. The vectorized run search in ``_text.longest_common_run`` is exact.
"""

from __future__ import annotations

from ssu.metrics._text import (
    codes,
    longest_common_run,
    normalize_chars,
    normalize_words,
    token_ids,
)
from ssu.metrics.registry import register_metric

# Shortest word run that counts towards ACS. Runs of one or two words ("of the") are
# common in any two English texts and say nothing about copying.
ACS_MIN_RUN = 3


def longest_common_substring_chars(prediction: str, reference: str) -> int:
    """Length in characters of the longest common substring of the normalized texts."""
    a, b = codes(normalize_chars(prediction)), codes(normalize_chars(reference))
    return longest_common_run(a, b)[0]


def longest_common_words(prediction: str, reference: str) -> int:
    """Length in words of the longest common contiguous word run."""
    a, b = token_ids(normalize_words(prediction), normalize_words(reference))
    return longest_common_run(a, b)[0]


def accumulated_common_words(
    prediction: str, reference: str, min_run: int = ACS_MIN_RUN
) -> int:
    """Total words in non-overlapping common word runs of at least ``min_run`` words.

    Greedy, longest first: take the longest common run, remove its words from both
    texts, repeat until the longest remaining run is shorter than ``min_run``. Removed
    positions are overwritten with sentinels (-1 in the prediction, -2 in the
    reference) that never match, so later runs cannot overlap or bridge earlier ones
    in either text.

    Raises:
        ValueError: ``min_run < 1``.
    """
    if min_run < 1:
        raise ValueError(f"min_run must be >= 1, got {min_run}")
    a, b = token_ids(normalize_words(prediction), normalize_words(reference))
    total = 0
    while True:
        length, start_a, start_b = longest_common_run(a, b)
        if length < min_run:
            return total
        total += length
        a[start_a : start_a + length] = -1
        b[start_b : start_b + length] = -2


@register_metric(
    "lcs_chars",
    higher_is_better=True,
    description="Longest common substring in normalized characters / reference length.",
)
def lcs_chars(prediction: str, reference: str) -> float:
    """Longest common character substring, normalized by the normalized reference length."""
    ref_len = len(normalize_chars(reference))
    if ref_len == 0:
        return 0.0
    return longest_common_substring_chars(prediction, reference) / ref_len


@register_metric(
    "lcs_words",
    higher_is_better=True,
    description="Longest common contiguous word run / reference word count.",
)
def lcs_words(prediction: str, reference: str) -> float:
    """Longest common contiguous word run, normalized by the reference word count."""
    ref_len = len(normalize_words(reference))
    if ref_len == 0:
        return 0.0
    return longest_common_words(prediction, reference) / ref_len


@register_metric(
    "acs_words",
    higher_is_better=True,
    description=f"Non-overlapping common word runs of >= {ACS_MIN_RUN} words / reference word count.",
)
def acs_words(prediction: str, reference: str) -> float:
    """Accumulated common word runs (>= 3 words), normalized by the reference word count."""
    ref_len = len(normalize_words(reference))
    if ref_len == 0:
        return 0.0
    return accumulated_common_words(prediction, reference) / ref_len
