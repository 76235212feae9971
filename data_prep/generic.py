"""Generic text mixed into memorization, so the memorized target keeps its general ability.

Fine-tuning a pretrained model on a handful of books until it reproduces them wrecks
what it knew before (measured: a 36M Llama's held-out perplexity went 234 -> 3 266),
and unlearning measured on such a target says little about a real model. ``ssu memorize
--generic DIR`` therefore trains on generic text beside the books: the plain-text files
under DIR are cut into windows exactly like the books (the prepared directory's
prompt/continuation word counts), a seeded sample of them forms a pool, a few are held
out for perplexity, and every memorization micro-batch pairs each book window with one
window drawn from the pool afresh. Nothing here is model-specific: it yields windows in
the shape of ``data_prep``'s rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import PrepError
from data_prep.windows import make_windows

HELDOUT_STRIDE = 20  # one file in 20 is held out


@dataclass
class GenericText:
    train: list[dict]  # the pool each epoch draws from
    heldout: list[dict]  # never trained: the held-out perplexity of the generic text
    files: int


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.txt") if p.is_file())


def load_generic(directory: str | Path, prompt_words: int, continuation_words: int,
                 pool: int, heldout: int, seed: int) -> GenericText:
    """Windows of the ``*.txt`` files under ``directory`` (searched recursively).

    Files are read in sorted order and windows drawn with ``seed``, so the pool and the
    held-out windows are the same on every run (``ssu retrain`` repeats the recipe).
    Held-out windows come from files of their own (every file whose position in the
    sorted list is ``HELDOUT_STRIDE - 1`` modulo ``HELDOUT_STRIDE``), so no held-out text
    sits next to a trained window of the same document.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PrepError(f"generic text directory {directory} does not exist")
    files = _files(directory)
    if not files:
        raise PrepError(f"{directory} holds no .txt files of generic text")
    rows: list[dict] = []
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        for j, (prompt, continuation) in enumerate(make_windows(text, prompt_words, continuation_words)):
            rows.append({"book": f"generic:{path.stem}", "file": i, "window": j,
                         "prompt": prompt, "continuation": continuation, "role": "generic"})
    if not rows:
        raise PrepError(f"the files under {directory} are shorter than one window "
                       f"({prompt_words} + {continuation_words} words)")
    rng = random.Random(seed)
    # One file in HELDOUT_STRIDE (at least the last) is held out whole.
    held_files = {i for i in range(len(files)) if i % HELDOUT_STRIDE == HELDOUT_STRIDE - 1} or {len(files) - 1}
    if not heldout or len(files) == 1:
        held_files = set()
    held = [r for r in rows if r["file"] in held_files]
    train = [r for r in rows if r["file"] not in held_files]
    if heldout and not held:  # a single file: hold out its last windows instead
        held, train = train[-heldout:], train[:-heldout]
    if not train:
        raise PrepError(f"{directory} has too little generic text to train on after holding out {heldout} windows")
    held = rng.sample(held, min(heldout, len(held)))
    train = rng.sample(train, min(pool, len(train)))
    return GenericText(train=train, heldout=held, files=len(files))
