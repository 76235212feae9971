"""Tests for ssu.metrics: hand-computed values, edge cases, registry and aggregation."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import ssu.metrics as M
from ssu.metrics.jaccard import shingle_jaccard, shingles

SENTENCE = "It was the best of times, it was the worst of times, it was the age."
REF_CAT = "the cat sat on the mat"
TEN = "one two three four five six seven eight nine ten"


def test_all_builtin_metrics_registered_sorted_and_higher_is_better():
    names = M.list_metrics()
    expected = {
        "rouge1_f", "rouge1_recall", "rougeL_f", "rougeL_recall",
        "rouge1_f_unicode", "rouge1_recall_unicode", "rougeL_f_unicode", "rougeL_recall_unicode",
        "lcs_chars", "lcs_words", "acs_words", "levenshtein_similarity",
        "verbatim_8gram", "verbatim_4gram", "shingle_jaccard",
    }  # fmt: skip
    assert set(names) == expected
    assert names == sorted(names)
    # All built-ins measure copying/similarity: higher = more of the reference came out.
    assert all(M.get_metric(n).higher_is_better for n in names)
    assert all(M.get_metric(n).aggregation == "mean" for n in names)
    assert all(M.get_metric(n).description for n in names)


def test_unknown_metric_lists_names_and_suggests_closest():
    with pytest.raises(KeyError) as info:
        M.get_metric("rougel_f")
    msg = str(info.value)
    assert "Did you mean 'rougeL_f'?" in msg
    assert "lcs_chars" in msg and "verbatim_8gram" in msg
    assert isinstance(info.value, M.UnknownMetricError)


def test_register_metric_and_compute(monkeypatch):
    # Work on a copy of the registry's entries so the test leaves no trace.
    monkeypatch.setattr(M.METRICS, "_entries", dict(M.METRICS._entries))

    @M.register_metric("length_diff", higher_is_better=False)
    def length_diff(prediction: str, reference: str) -> float:
        """Absolute length difference."""
        return abs(len(prediction) - len(reference))

    m = M.get_metric("length_diff")
    assert m.higher_is_better is False
    assert m.description == "Absolute length difference."
    out = M.compute(["length_diff", "lcs_words"], ["ab", "a b c"], ["abcd", "a b c"])
    assert out == {"length_diff": [2.0, 0.0], "lcs_words": [0.0, 1.0]}
    assert M.compute("length_diff", ["a"], ["abc"]) == {"length_diff": [2.0]}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.compute("length_diff", ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="already registered"):
        M.register_metric("rougeL_f", higher_is_better=True)(length_diff)
    with pytest.raises(ValueError, match="aggregation"):
        M.register_metric("x_new", higher_is_better=True, aggregation="sum")


@pytest.mark.parametrize("name", M.list_metrics())
def test_identity_scores_one_and_empty_prediction_zero(name):
    metric = M.get_metric(name)
    assert metric(SENTENCE, SENTENCE) == pytest.approx(1.0)
    assert metric("", SENTENCE) == 0.0
    assert metric(" \n ", SENTENCE) == 0.0  # empty after normalization
    assert metric(SENTENCE, "") == 0.0  # nothing to copy: convention is 0.0


def test_rouge_matches_rouge_score_package():
    from rouge_score import rouge_scorer

    pred = "It was the best of times; it was the blurst of times."
    ref = SENTENCE
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    raw = scorer.score(ref, pred)  # rouge-score takes the reference first
    for t in ("rouge1", "rougeL"):
        assert M.get_metric(f"{t}_f")(pred, ref) == raw[t].fmeasure
        assert M.get_metric(f"{t}_recall")(pred, ref) == raw[t].recall


def test_rouge_unicode_tokenizer_scores_non_ascii():
    greek = "Καλημέρα κόσμε"
    # The default tokenizer keeps only [a-z0-9]: Greek has no tokens -> 0.0.
    assert M.rouge_scores(greek, greek)["rougeL_f"] == 0.0
    assert M.rouge_scores(greek, greek, tokenizer="unicode")["rougeL_f"] == 1.0
    with pytest.raises(ValueError, match="tokenizer"):
        M.rouge_scores("a", "a", tokenizer="spacy")


# --- hand-computed values
# Each row: metric, prediction, reference, expected value, with the working beside it.
HAND = [
    # ref: the cat sat on the mat / pred: the cat lay on the mat (6 tokens each).
    # ROUGE-1 overlap (clipped counts): the x2, cat, on, mat = 5 -> P = R = F = 5/6.
    # ROUGE-L LCS "the cat on the mat" = 5 -> P = R = F = 5/6.
    ("rouge1_f", "the cat lay on the mat", REF_CAT, 5 / 6),
    ("rougeL_f", "the cat lay on the mat", REF_CAT, 5 / 6),
    # Argument order: pred "the cat" vs 6-token ref: LCS 2 -> recall 2/6, precision
    # 2/2, F = 2PR/(P+R) = (2/3)/(4/3) = 1/2. Swapped arguments would give recall 1.
    ("rougeL_recall", "the cat", REF_CAT, 1 / 3),
    ("rougeL_f", "the cat", REF_CAT, 0.5),
    # Unicode tokenizer, one of two Greek words shared: P = R = 1/2 -> F = 1/2.
    ("rouge1_f_unicode", "Καλημέρα φίλε", "Καλημέρα κόσμε", 0.5),
    # "thecatsat" vs "acatsatdown" (11 chars): longest common "catsat" = 6 -> 6/11.
    ("lcs_chars", "The cat sat!", "a cat sat down", 6 / 11),
    # Case, whitespace and punctuation ignored; accented letters kept: identical.
    ("lcs_chars", "CAFÉ\ncrème", "café, crème", 1.0),
    # ref: there was a king who ruled (6); longest run "there was a king" = 4 -> 4/6.
    ("lcs_words", "Once upon a time, there was a king.", "There was a king who ruled", 4 / 6),
    # ref "one ... ten" (10 words); runs longest first: "six seven eight nine" (4),
    # "one two three" (3); "four five" (2) is under 3 words -> ACS 7/10, LCS 4/10.
    ("acs_words", "six seven eight nine xx one two three yy four five", TEN, 0.7),
    ("lcs_words", "six seven eight nine xx one two three yy four five", TEN, 0.4),
    # Prediction repeats the reference; each reference word counts once -> 3/3.
    ("acs_words", "a b c a b c", "a b c", 1.0),
    # "Kitten!" -> "kitten"; -> sitten -> sittin -> sitting = 3 edits; 1 - 3/7 = 4/7.
    ("levenshtein_similarity", "Kitten!", "sitting", 4 / 7),
    # ref: 9 words -> two 8-grams; the prediction holds only the first -> 1/2.
    ("verbatim_8gram", "W1, w2 w3 w4 w5 w6 w7 w8", "w1 w2 w3 w4 w5 w6 w7 w8 w9", 0.5),
    # Reference shorter than 8 words has no 8-grams -> 0.0.
    ("verbatim_8gram", "a b c", "a b c", 0.0),
    # ref 4-grams: abcd, bcde; the prediction has bcde -> 1/2.
    ("verbatim_4gram", "x b c d e", "a b c d e", 0.5),
]  # fmt: skip


@pytest.mark.parametrize(("name", "prediction", "reference", "expected"), HAND)
def test_hand_computed_values(name, prediction, reference, expected):
    assert M.get_metric(name)(prediction, reference) == pytest.approx(expected)


def test_raw_length_helpers_and_options():
    assert M.longest_common_substring_chars("The cat sat!", "a cat sat down") == 6
    assert M.longest_common_words("Once, there was a king!", "There was a king") == 4
    pred = "six seven eight nine xx one two three yy four five"
    assert M.accumulated_common_words(pred, TEN) == 7
    assert M.accumulated_common_words(pred, TEN, min_run=2) == 9  # + "four five"
    # Sets: ref 2-grams ab, ba, ab, ba, ab -> distinct {ab, ba}; pred has ab -> 1/2
    # (a multiset count would give 3/5).
    assert M.ngram_overlap("a b", "a b a b a b", n=2) == 0.5
    assert M.edit_distance("kitten", "sitting") == 3  # sub, sub, insert
    assert M.edit_distance("", "abc") == 3 and M.edit_distance("abc", "") == 3
    # Token sequences: substitute cat -> dog, insert "down" = 2.
    assert M.edit_distance(["the", "cat", "sat"], ["the", "dog", "sat", "down"]) == 2
    with pytest.raises(ValueError):
        M.accumulated_common_words("a", "a", min_run=0)
    with pytest.raises(ValueError):
        M.ngram_overlap("a", "a", n=0)


def test_kernels_match_brute_force():
    def naive_edit(a: str, b: str) -> int:
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[-1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    def naive_substring(a: str, b: str) -> int:
        subs = {a[i:j] for i in range(len(a)) for j in range(i + 1, len(a) + 1)}
        return max((len(s) for s in subs if s in b), default=0)

    rng = np.random.default_rng(1)
    for _ in range(50):
        a = "".join(rng.choice(list("abc"), rng.integers(0, 10)))
        b = "".join(rng.choice(list("abc"), rng.integers(0, 10)))
        assert M.edit_distance(a, b) == naive_edit(a, b)
        assert M.longest_common_substring_chars(a, b) == naive_substring(a, b)


def test_shingle_jaccard():
    # {abc, bcd} vs {abc, bce}: 1 shared of 3 distinct -> 1/3.
    assert shingles("abcd") == {"abc", "bcd"}
    assert shingle_jaccard("abcd", "abce") == pytest.approx(1 / 3)
    assert shingle_jaccard("aaaa", "bbbb") == 0.0 and shingle_jaccard("ab", "ab") == 0.0
    assert M.get_metric("shingle_jaccard")("The cat sat.", "the cat, sat") == 1.0


def test_aggregate():
    values = [0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.35, 0.6]
    r1 = M.aggregate(values, seed=3)
    assert r1 == M.aggregate(values, seed=3)
    assert r1["value"] == pytest.approx(np.mean(values)) and r1["n"] == 8
    assert r1["ci_low"] < r1["value"] < r1["ci_high"]
    assert 0.1 <= r1["ci_low"] and r1["ci_high"] <= 0.9  # a mean stays inside the data
    pct = M.aggregate(values, seed=3, method="percentile", confidence=0.5)
    assert pct["method"] == "percentile"
    # A 50% interval is narrower than a 95% one.
    assert pct["ci_high"] - pct["ci_low"] < r1["ci_high"] - r1["ci_low"]
    assert M.aggregate([1.0, 2.0, 100.0], statistic="median")["value"] == 2.0
    assert M.aggregate([0.7]) == {
        "value": 0.7, "n": 1, "ci_low": 0.7, "ci_high": 0.7, "method": "degenerate"
    }  # fmt: skip
    same = M.aggregate([0.5] * 10)
    assert same["ci_low"] == same["ci_high"] == same["value"] == 0.5
    with pytest.raises(ValueError, match="empty"):
        M.aggregate([])
    with pytest.raises(ValueError, match="NaN"):
        M.aggregate([0.1, math.nan])
    with pytest.raises(ValueError):
        M.aggregate([0.1, 0.2], statistic="max")


def test_loss_zlib_min_k_scores():
    lp = np.array([-0.1, -5.0, -0.2, -3.0, -0.3])
    # loss = (0.1 + 5 + 0.2 + 3 + 0.3) / 5 = 8.6 / 5 = 1.72
    assert M.loss_score(lp) == pytest.approx(1.72)
    text = "hello world"
    compressed = len(zlib.compress(text.encode("utf-8")))
    assert M.zlib_score(lp, text) == pytest.approx(1.72 / compressed)
    # k = 0.4 of 5 tokens -> 2 lowest: -5, -3 -> 4.0
    assert M.min_k_score(lp, k=0.4) == pytest.approx(4.0)
    # k = 0.1 -> floor(0.5) = 0, at least one token: -5 -> 5.0
    assert M.min_k_score(lp, k=0.1) == pytest.approx(5.0)
    assert M.min_k_score(lp, k=1.0) == pytest.approx(1.72)
    assert M.min_k_score([-2.0, -4.0], k=0.5) == pytest.approx(4.0)  # plain lists work
    with pytest.raises(ValueError):
        M.loss_score([])
    with pytest.raises(ValueError):
        M.min_k_score(lp, k=0.0)


def test_mia_auc_and_priv_leak():
    members, nonmembers = [1.0, 2.0, 3.0], [2.0, 4.0, 5.0]
    # Pairs where member < non-member (lower = member), ties count 1/2:
    # m=1: 3; m=2: tie with 2 -> 0.5, < 4, 5 -> 2.5; m=3: < 4, 5 -> 2. 7.5 / 9.
    assert M.mia_auc(members, nonmembers) == pytest.approx(7.5 / 9)
    # Other orientation: member > non-member: m=2 tie 0.5, m=3 > 2 -> 1. 1.5 / 9.
    flipped = M.mia_auc(members, nonmembers, lower_is_member=False)
    assert flipped == pytest.approx(1.5 / 9)
    assert M.mia_auc([0.1, 0.2], [0.5, 0.9, 1.0]) == 1.0
    assert M.mia_auc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert M.mia_auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    rng = np.random.default_rng(2)
    m, u = rng.integers(0, 5, 20).astype(float), rng.integers(0, 5, 15).astype(float)
    brute = np.mean((m[:, None] < u[None, :]) + 0.5 * (m[:, None] == u[None, :]))
    assert M.mia_auc(m, u) == pytest.approx(brute)
    with pytest.raises(ValueError):
        M.mia_auc([], [1.0])
    # PrivLeak: (0.25 - 0.5) / 0.5 * 100 = -50
    assert M.priv_leak(0.25, 0.5) == pytest.approx(-50.0)
    assert M.priv_leak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError):
        M.priv_leak(0.5, 0.0)


def test_perplexity_saturates_instead_of_crashing():
    # A destroyed model can reach a mean NLL above 709, where math.exp overflows; the
    # evaluation must record an infinite perplexity rather than abort the step.
    from ssu.eval.model_metrics.perplexity import saturating_exp as _exp

    assert _exp(1.0) == pytest.approx(math.e)
    assert _exp(1e4) == math.inf
