"""Stage 3: turn a raw books directory into a prepared directory.

``prepare_books`` reads every book of the layout, cleans it, cuts it into
windows and writes three files that every later stage reads:

* ``windows.jsonl`` - one (prompt, continuation) window per line: the forget
  sets and the memorization probes.
* ``books.jsonl`` - one cleaned book per line: the text the target model is
  fine-tuned on and the source of perplexity/privacy probes.
* ``schedule.json`` - which books are forgotten at which step, the retain and
  held-out books, and the options used, so a prepared directory describes
  itself.

All input is validated before the first byte is written and the output
directory is built with ``atomic_dir``, so a bad book or a crash leaves either
no output directory or the previous one, never a half-prepared one. The same
input and options always give byte-identical files (sorted keys, sorted
books, no timestamps), so a prepared directory can be checksummed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.clean import clean_text
from data_prep.errors import PrepError, out_dir_exists
from data_prep.layout import check_unique_content, discover_layout
from data_prep.windows import count_words, make_windows, truncate_words
from ssu.io import atomic_dir, atomic_write_json, atomic_write_text

FORMAT_VERSION = 1
SCHEDULE_FILE = "schedule.json"
WINDOWS_FILE = "windows.jsonl"
BOOKS_FILE = "books.jsonl"


@dataclass
class PreparedBook:
    """One cleaned book and its windows, held in memory until all are valid."""

    path: Path
    book: str
    role: str
    step: int
    text: str
    n_words: int
    windows: list[tuple[str, str]]


def read_book_text(path: Path) -> str:
    """Return the UTF-8 content of ``path``, rejecting binary and other encodings.

    Raises:
        PrepError: the file cannot be read, contains NUL bytes (a binary file,
            or UTF-16/32 text), or is not valid UTF-8. A leading UTF-8 byte
            order mark is accepted and removed.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PrepError(f"cannot read book {path}: {exc.strerror or exc}") from exc
    if b"\x00" in data:
        raise PrepError(
            f"book {path} is a binary file (contains NUL bytes); expected UTF-8 text"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PrepError(
            f"book {path} is not valid UTF-8 (bad byte at offset {exc.start}); "
            "re-encode it as UTF-8"
        ) from exc


def _check_options(
    prompt_words: int, continuation_words: int, max_words: int | None
) -> None:
    counts = {"prompt_words": prompt_words, "continuation_words": continuation_words}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrepError(f"{name} must be a positive integer, got {value!r}")
    if max_words is not None:
        window = prompt_words + continuation_words
        if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < window:
            raise PrepError(
                f"max_words must be at least one window ({window} words), got {max_words!r}"
            )


def _check_out_dir(books_dir: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise out_dir_exists(out_dir)
    # With overwrite, replacing the books directory (or a parent of it) would
    # delete the very input being prepared.
    src, dst = books_dir.resolve(), out_dir.resolve()
    if dst == src or dst in src.parents:
        raise PrepError(
            f"output directory {out_dir} would replace the books directory {books_dir}"
        )


def _load_book(
    path: Path, role: str, step: int, prompt_words: int, continuation_words: int,
    max_words: int | None, lowercase: bool,
) -> PreparedBook:
    """Read, clean, truncate and window one book, or raise PrepError."""
    text = clean_text(read_book_text(path), lowercase=lowercase)
    if not text:
        raise PrepError(f"book {path} has no text (empty or whitespace only after cleaning)")
    text = truncate_words(text, max_words)
    needed = prompt_words + continuation_words
    n_words = count_words(text)
    if n_words < needed:
        raise PrepError(
            f"book {path} has {n_words} words after cleaning, fewer than one window "
            f"({needed} words = prompt_words {prompt_words} + continuation_words "
            f"{continuation_words})"
        )
    windows = make_windows(text, prompt_words, continuation_words)
    return PreparedBook(path, path.stem, role, step, text, n_words, windows)


REQUEST_FILE = "request.json"
REQUEST_KEYS = ("id", "note")


def read_requests(books_dir: Path, steps: list[int]) -> dict[str, dict[str, str]]:
    """The takedown request each step serves, from an optional ``time_step_T/request.json``
    (``{"id": "...", "note": "..."}``); recorded in the schedule and, per step, the manifest."""
    out = {}
    for t in steps:
        path = books_dir / f"time_step_{t}" / REQUEST_FILE
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PrepError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict) or set(data) - set(REQUEST_KEYS) or \
                not all(isinstance(v, str) for v in data.values()):
            raise PrepError(f"{path} must be a JSON object with string fields from {', '.join(REQUEST_KEYS)}")
        out[str(t)] = data
    return out


def _jsonl(rows: list[dict[str, Any]]) -> str:
    # Sorted keys and literal UTF-8 (no \u escapes) keep files deterministic
    # and readable.
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def prepare_books(
    books_dir: str | Path,
    out_dir: str | Path,
    prompt_words: int = 100,
    continuation_words: int = 100,
    max_words: int | None = None,
    lowercase: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Validate, clean and window a raw books directory into ``out_dir``.

    Args:
        books_dir: raw layout (see :mod:`data_prep.layout`).
        out_dir: prepared directory to create.
        prompt_words: words per prompt.
        continuation_words: words per continuation.
        max_words: keep only the first ``max_words`` words of every book
            (small, fast experiments); ``None`` keeps whole books.
        lowercase: lower-case all text.
        overwrite: replace an existing ``out_dir`` (atomically).

    Returns:
        The schedule, exactly as written to ``schedule.json``.

    Raises:
        PrepError: any bad option, layout or book, with a one-line message
            naming it; nothing is written in that case.
    """
    books_dir, out_dir = Path(books_dir), Path(out_dir)
    _check_options(prompt_words, continuation_words, max_words)
    _check_out_dir(books_dir, out_dir, overwrite)
    layout = discover_layout(books_dir)

    books = [
        _load_book(path, role, step, prompt_words, continuation_words, max_words, lowercase)
        for role, step, path in layout.entries()
    ]
    check_unique_content([(b.role, b.step, b.path, b.text) for b in books])

    schedule: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "steps": {str(t): [p.stem for p in layout.steps[t]] for t in sorted(layout.steps)},
        "retain": [p.stem for p in layout.retain],
        "heldout": [p.stem for p in layout.heldout],
        "prompt_words": prompt_words,
        "continuation_words": continuation_words,
        "max_words": max_words,
        "lowercase": lowercase,
        "source": str(books_dir.resolve()),
        # what the takedown record names as removed: each raw file's bytes
        "raw_sha256": {b.book: hashlib.sha256(b.path.read_bytes()).hexdigest() for b in books},
    }
    requests = read_requests(books_dir, sorted(layout.steps))
    if requests:
        schedule["requests"] = requests
    window_rows = [
        {"book": b.book, "role": b.role, "step": b.step, "window": i,
         "prompt": prompt, "continuation": continuation}
        for b in books
        for i, (prompt, continuation) in enumerate(b.windows)
    ]
    book_rows = [
        {"book": b.book, "role": b.role, "step": b.step, "n_words": b.n_words,
         "n_windows": len(b.windows), "text": b.text}
        for b in books
    ]

    try:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            atomic_write_text(tmp / WINDOWS_FILE, _jsonl(window_rows))
            atomic_write_text(tmp / BOOKS_FILE, _jsonl(book_rows))
            atomic_write_json(tmp / SCHEDULE_FILE, schedule)
    except FileExistsError as exc:
        # Lost a race with another writer between the check above and now.
        raise out_dir_exists(out_dir) from exc
    return schedule
