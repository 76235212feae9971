"""A synthetic raw-books corpus for tests, demos and tiny CPU experiments.

Real books cannot ship with the repository, and a tiny model pre-trained on
English would already "know" much of a real book. The synthetic books are
built so that the only way to reproduce one is to memorize it word by word:

* every book has its own invented vocabulary (character and place names and
  about 40 nouns, verbs and adjectives built from random syllables), so books
  share almost nothing but English function words and forgetting one book
  can be told apart from forgetting another;
* sentences are drawn from varied templates whose slots are filled uniformly
  at random, so the text is predictable only as far as local grammar goes.

The output uses the same layout ``prepare_books`` reads (``time_step_{i}/``,
``retain/``, ``heldout/``). Each book's generator is a ``random.Random``
seeded from ``(seed, role, index)`` alone, so a corpus is reproducible, and a
book does not change when the number of other books does.
"""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

from data_prep.errors import PrepError, out_dir_exists
from ssu.io import atomic_dir, atomic_write_text

# Every word of a synthetic book that is not invented comes from this set
# (tests use it to compare the invented vocabularies of two books).
FUNCTION_WORDS = frozenset({
    "a", "after", "again", "and", "as", "at", "because", "before", "beside", "but",
    "by", "every", "from", "had", "her", "his", "in", "into", "it", "its", "near",
    "no", "of", "on", "once", "over", "said", "that", "the", "their", "then",
    "through", "to", "under", "was", "when", "which", "while", "with",
})

# Slots: N = character name, P = place name, n = noun, v = verb (past tense),
# a = adjective. Varied shapes keep the function words from forming a fixed
# rhythm a model could lean on instead of memorizing.
_TEMPLATES = (
    "{N} {v} the {a} {n} near {P}.",
    "In {P}, the {n} {v} a {a} {n}.",
    "{N} and {N} {v} the {n}, but the {n} was {a}.",
    "When the {a} {n} {v}, {N} {v} into the {n} of {P}.",
    "The {n} of {N} was {a} and {a}.",
    "At {P} every {n} {v} with a {a} {n}.",
    "{N} {v} the {n}, then {v} it beside the {a} {n}.",
    "Because the {n} had {v}, the {n} of {P} {v} again.",
    "{N} said that the {n} was {a}, and {N} {v}.",
    "After the {n} {v} over {P}, {N} {v} a {a} {n} and a {a} {n}.",
    "Her {n} {v} under the {a} {n} while {N} {v}.",
    "No {n} in {P} was as {a} as the {n} of {N}.",
    "Once {N} {v} through {P} with his {a} {n}.",
    "Their {n} {v} before the {n}, which was {a}.",
    "{N} {v} on the {n} at {P}, because it {v} by the {a} {n}.",
)
_SLOT_RE = re.compile(r"\{([NPnva])\}")

# Mostly single consonants, single vowels and open syllables keep the words
# short and pronounceable (and cheap in tokens); the few clusters add variety.
_ONSETS = tuple("bdfghklmnprstvz") + ("br", "dr", "st", "th", "tr", "sh")
_VOWELS = tuple("aeiou") * 3 + ("ai", "ou", "ea")
_CODAS = ("",) * 8 + ("n", "r", "l", "s", "m", "th")
_ADJ_SUFFIXES = ("ish", "ous", "ic", "y", "en")

_VOCAB_SIZES = {"N": 4, "P": 3, "n": 14, "v": 13, "a": 13}


def _syllables(rng: random.Random, low: int, high: int) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.randint(low, high))
    )


def invent_vocabulary(rng: random.Random) -> dict[str, list[str]]:
    """Return a fresh vocabulary: slot letter -> distinct invented words.

    Names and places are capitalized; verbs end in ``-ed`` and adjectives in
    a per-word suffix so the words look like English parts of speech. All
    words are distinct from each other and from the function words.
    """
    used: set[str] = set(FUNCTION_WORDS)
    vocab: dict[str, list[str]] = {}
    for slot, size in _VOCAB_SIZES.items():
        words: list[str] = []
        while len(words) < size:
            stem = _syllables(rng, 1, 2) if slot in "va" else _syllables(rng, 2, 3)
            if slot == "v":
                word = stem + "ed"
            elif slot == "a":
                word = stem + rng.choice(_ADJ_SUFFIXES)
            elif slot in "NP":
                word = stem.capitalize()
            else:
                word = stem
            if word.lower() not in used:
                used.add(word.lower())
                words.append(word)
        vocab[slot] = words
    return vocab


def _sentence(rng: random.Random, vocab: dict[str, list[str]]) -> list[str]:
    """Return one sentence as a list of words, no word repeated within a slot type."""
    taken: dict[str, set[str]] = {slot: set() for slot in vocab}

    def fill(match: re.Match[str]) -> str:
        slot = match.group(1)
        fresh = [w for w in vocab[slot] if w not in taken[slot]] or vocab[slot]
        word = rng.choice(fresh)
        taken[slot].add(word)
        return word

    return _SLOT_RE.sub(fill, rng.choice(_TEMPLATES)).split()


def synthetic_book(seed: int, role: str, index: int, words: int) -> str:
    """Return the text of one synthetic book with exactly ``words`` words.

    Paragraphs of 3-6 sentences are wrapped at 72 columns and separated by a
    blank line, like a plain-text book. The last sentence is cut to hit the
    word count exactly and closed with a period.
    """
    rng = random.Random(f"ssu-synth:{seed}:{role}:{index}")
    vocab = invent_vocabulary(rng)
    paragraphs: list[list[str]] = []
    total = 0
    while total < words:
        paragraph: list[str] = []
        for _ in range(rng.randint(3, 6)):
            sentence = _sentence(rng, vocab)[: words - total]
            total += len(sentence)
            paragraph += sentence
            if total == words:
                paragraph[-1] = paragraph[-1].rstrip(".,") + "."
                break
        paragraphs.append(paragraph)
    return "\n\n".join(
        textwrap.fill(" ".join(p), width=72, break_long_words=False, break_on_hyphens=False)
        for p in paragraphs
    ) + "\n"


def write_synthetic_corpus(
    out_dir: str | Path,
    n_books: int = 6,
    seed: int = 0,
    words_per_book: int = 1000,
    n_retain: int = 2,
    n_heldout: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic raw-books directory and return its path.

    Layout: ``time_step_{i}/synth_{i:02d}.txt`` for ``i = 1..n_books`` (one
    book per step), ``retain/retain_{j:02d}.txt`` and
    ``heldout/heldout_{j:02d}.txt`` for ``j = 1..n``. The directory is built
    atomically, so an interrupted run leaves nothing behind.

    Raises:
        PrepError: a count is out of range, or ``out_dir`` exists and
            ``overwrite`` is false.
    """
    out = Path(out_dir)
    for name, value, low in (("n_books", n_books, 1), ("words_per_book", words_per_book, 1),
                             ("n_retain", n_retain, 0), ("n_heldout", n_heldout, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PrepError(f"{name} must be an integer >= {low}, got {value!r}")
    if out.exists() and not overwrite:
        raise out_dir_exists(out)

    files = [(f"time_step_{i}/synth_{i:02d}.txt", "forget", i) for i in range(1, n_books + 1)]
    files += [(f"retain/retain_{j:02d}.txt", "retain", j) for j in range(1, n_retain + 1)]
    files += [(f"heldout/heldout_{j:02d}.txt", "heldout", j) for j in range(1, n_heldout + 1)]
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for rel, role, index in files:
                atomic_write_text(tmp / rel, synthetic_book(seed, role, index, words_per_book))
    except FileExistsError as exc:
        raise out_dir_exists(out) from exc
    return out
