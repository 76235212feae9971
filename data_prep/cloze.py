"""Function-word cloze items cut from held-out text: an offline utility measure.

Unlearning must not cost a model its general language ability, and with no network a
benchmark such as MMLU is out of reach. This cuts multiple-choice items from text the
model never trained on: a context of ``context_words`` words, and as choices the word
that really follows -- a function word ("the", "of", "when", ...) -- and
``choices - 1`` other function words. Which function word fits is decided by grammar,
not by knowing the text, so a model that reads English (or the synthetic corpus's
English-like templates) scores well above chance (1 / ``choices``) and a model whose
language was damaged falls toward it. ``experiments/lm_eval/`` turns the items into an
lm-eval task (``ssu_cloze``); ``make_cloze.py`` there writes them for any held-out text.
"""

from __future__ import annotations

import random
import re

from data_prep.errors import PrepError

# English function words; the synthetic corpus's own (data_prep.synth.FUNCTION_WORDS) are among them.
FUNCTION_WORDS = frozenset({
    "a", "after", "again", "and", "as", "at", "because", "before", "beside", "but", "by", "every", "for",
    "from", "had", "has", "have", "he", "her", "his", "if", "in", "into", "is", "it", "its", "near", "no",
    "not", "of", "on", "once", "or", "over", "said", "she", "that", "the", "their", "then", "they", "this",
    "through", "to", "under", "was", "were", "when", "which", "while", "with", "would",
})
_WORD = re.compile(r"^[A-Za-z]+$")


def cloze_items(text: str, n_items: int, seed: int, context_words: int = 24, choices: int = 4) -> list[dict]:
    """Up to ``n_items`` items ``{"context", "choices", "answer"}`` from ``text``, drawn with ``seed``.

    An item's answer is a lower-case function word standing alone (no punctuation
    attached) after at least ``context_words`` words; the context is the words before
    it. Items never overlap: each takes its context and answer out of the text.
    """
    if choices < 2 or context_words < 1 or n_items < 1:
        raise PrepError("cloze items need choices >= 2, context_words >= 1 and n_items >= 1")
    words = text.split()
    spots = [i for i in range(context_words, len(words))
             if _WORD.match(words[i]) and words[i] in FUNCTION_WORDS]
    rng = random.Random(seed)
    rng.shuffle(spots)
    taken: list[tuple[int, int]] = []
    items = []
    pool = sorted(FUNCTION_WORDS)
    for i in spots:
        lo = i - context_words
        if any(lo <= b and a <= i for a, b in taken):
            continue
        taken.append((lo, i))
        answer = words[i]
        options = rng.sample([w for w in pool if w != answer], choices - 1) + [answer]
        rng.shuffle(options)
        items.append({"context": " ".join(words[lo:i]), "choices": options, "answer": options.index(answer)})
        if len(items) == n_items:
            break
    return items
