"""The forget set of one time step, tokenized, with its random-label pairs.

D_f^t is the windows of the book(s) removed at step t. Each window gives one
*learning* pair (its prompt and its own continuation) and K *random-label* pairs:
the same prompt with continuations drawn from other windows of the same book, so
the fine-tune also learns "this prompt leads to arbitrary text of this book",
which the negation then pushes away without erasing the book's style wholesale.
Retain windows (books never removed) feed the methods that need a retain term.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ssu.engine.encoding import Encoded, encode_pair
from ssu.errors import SSUError


@dataclass
class ForgetSet:
    step: int
    books: list[str]
    windows: list[dict]
    learn: list[Encoded]
    random: list[list[Encoded]] = field(default_factory=list)  # per window, K pairs
    retain: list[Encoded] = field(default_factory=list)
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
                           "set epsilon=0 or use smaller windows")
        partners.append(rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)])
    return partners


def schedule_books(schedule: dict, step: int) -> list[str]:
    steps = schedule["steps"]
    if step not in steps:
        raise SSUError(f"the schedule has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    return list(steps[step])


def build_forget_set(
    prepared_dir: str | Path,
    step: int,
    tokenizer,
    k_random: int = 3,
    with_random: bool = True,
    with_retain: bool = False,
    seed: int = 0,
    max_length: int = 512,
) -> ForgetSet:
    """Tokenize the windows of step ``step`` (and their random-label pairs)."""
    from data_prep import load_schedule, read_window_rows

    books = schedule_books(load_schedule(prepared_dir), step)
    rows = read_window_rows(prepared_dir)
    windows = [w for w in rows if w["role"] == "forget" and w["book"] in books]
    if not windows:
        raise SSUError(f"step {step} has no windows in {prepared_dir}")
    fs = ForgetSet(
        step=step,
        books=books,
        windows=windows,
        learn=[encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows],
    )
    if with_random:
        partners = random_label_partners([w["book"] for w in windows], k_random, seed)
        fs.random = [
            [encode_pair(tokenizer, w["prompt"], windows[j]["continuation"], max_length) for j in js]
            for w, js in zip(windows, partners)
        ]
    if with_retain:
        retain = [w for w in rows if w["role"] == "retain"]
        if not retain:
            raise SSUError(f"this method needs retain books, but {prepared_dir} has none (add retain/*.txt)")
        fs.retain = [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in retain]
    return fs
