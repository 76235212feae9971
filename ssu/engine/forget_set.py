"""The forget set of one time step, tokenized, with its random-label pairs.

D_f^t is the windows of the book(s) removed at step t. Each window gives one
*learning* pair (its prompt and its own continuation) and K *random-label* pairs:
the same prompt with continuations drawn from other windows of the same book, so
the fine-tune also learns "this prompt leads to arbitrary text of this book",
which the negation then pushes away without erasing the book's style wholesale.
Retain windows (books never removed) feed the methods and regularizers that need a
retain term; the windows of books removed at earlier steps feed the ``guard``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ssu.engine.encoding import Encoded, encode_pair
from ssu.errors import SSUError


@dataclass
class ForgetSet:
    """One step's windows as token ids: what the fine-tune and the regularizers work on.

    ``windows`` are the removed books' rows (``book, window, prompt, continuation``);
    ``learn[i]`` / ``random[i]`` encode window i. ``retain`` and ``earlier`` (books
    removed at earlier steps) are encoded only when the method or a regularizer asks.
    """

    step: int
    books: list[str]
    windows: list[dict]
    learn: list[Encoded]
    random: list[list[Encoded]] = field(default_factory=list)  # per window, K pairs
    retain: list[Encoded] = field(default_factory=list)
    earlier: list[Encoded] = field(default_factory=list)
    earlier_books: list[str] = field(default_factory=list)
    pad_id: int = 0
    seed: int = 0  # the step's seed: micro-batch order, random-label partners
    tokenizer: Any = field(default=None, repr=False)  # what the ids came from (a method reading token text)
    # What the step's regularizers compute once and share while they prepare (the retain
    # Fisher that fisher and retain-mask both take); emptied before training.
    shared: dict = field(default_factory=dict, repr=False)


def random_label_partners(books: list[str], k: int, seed: int) -> list[list[int]]:
    """For window i, K indices j != i of other windows of the same book.

    Drawn without replacement while the book has at least K other windows, with
    replacement otherwise; a book with a single window borrows from the other
    books of the step. Deterministic for a seed.
    """
    rng = random.Random(seed)
    by_book: dict[str, list[int]] = {}
    for i, b in enumerate(books):
        by_book.setdefault(b, []).append(i)
    partners = []
    for i, b in enumerate(books):
        pool = [j for j in by_book[b] if j != i] or [j for j in range(len(books)) if j != i]
        if not pool:
            raise SSUError("random labels need at least two windows in the forget set; "
                           "set the method's epsilon to 0 or use smaller windows")
        partners.append(rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)])
    return partners


def encode_windows(tokenizer, windows: list[dict], max_length: int) -> list[Encoded]:
    return [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows]


def build_forget_set(
    step: int,
    windows: list[dict],
    tokenizer,
    *,
    k_random: int = 3,
    with_random: bool = True,
    retain: list[dict] | None = None,
    earlier: list[dict] | None = None,
    seed: int = 0,
    max_length: int = 512,
    books: list[str] | None = None,
) -> ForgetSet:
    """Tokenize the windows a step removes, their random-label pairs, and the retain and
    earlier-removed windows given. The windows come from the caller (the step recipe
    reads the prepared directory and the schedule); nothing here reads a file."""
    if not windows:
        raise SSUError(f"step {step} has no windows to remove")
    books = list(books) if books is not None else list(dict.fromkeys(w["book"] for w in windows))
    fs = ForgetSet(step=step, books=books, windows=list(windows), learn=encode_windows(tokenizer, windows, max_length),
                   pad_id=tokenizer.pad_token_id, seed=seed, tokenizer=tokenizer)
    if with_random:
        partners = random_label_partners([w["book"] for w in windows], k_random, seed)
        fs.random = [
            [encode_pair(tokenizer, w["prompt"], windows[j]["continuation"], max_length) for j in js]
            for w, js in zip(windows, partners)
        ]
    if retain is not None:
        if not retain:
            raise SSUError("this step needs retain books, but the prepared data has none (add retain/*.txt)")
        fs.retain = encode_windows(tokenizer, retain, max_length)
    if earlier:
        fs.earlier = encode_windows(tokenizer, earlier, max_length)
        fs.earlier_books = sorted({w["book"] for w in earlier})
    return fs
