"""Read a prepared directory written by :func:`data_prep.prepare.prepare_books`.

Later stages never parse the raw books again; they read the schedule and the
windows/books through these functions. Windows and books come back as
``datasets.Dataset`` objects built in memory with ``Dataset.from_dict``:
that works offline and writes nothing to the Hugging Face cache, and the rows
keep file order (steps ascending, books by name, windows in text order).
``datasets`` is imported lazily so importing ``data_prep`` stays cheap;
:func:`read_window_rows` gives the same rows as plain dicts without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.errors import PrepError
from data_prep.prepare import BOOKS_FILE, FORMAT_VERSION, SCHEDULE_FILE, WINDOWS_FILE

if TYPE_CHECKING:
    import datasets

ROLES = ("forget", "retain", "heldout")
_WINDOW_COLUMNS = {"book": "string", "role": "string", "step": "int64", "window": "int64",
                   "prompt": "string", "continuation": "string"}
_BOOK_COLUMNS = {"book": "string", "role": "string", "step": "int64", "n_words": "int64",
                 "n_windows": "int64", "text": "string"}


def _require_prepared(prepared_dir: str | Path) -> Path:
    root = Path(prepared_dir)
    if not (root / SCHEDULE_FILE).is_file():
        raise PrepError(
            f"{root} is not a prepared directory (no {SCHEDULE_FILE}); run `ssu prepare` first"
        )
    return root


def load_schedule(prepared_dir: str | Path) -> dict[str, Any]:
    """Return the schedule of a prepared directory, with integer step keys.

    Raises:
        PrepError: the directory has no ``schedule.json``, or it is unreadable
            or of an unknown format version.
    """
    path = _require_prepared(prepared_dir) / SCHEDULE_FILE
    try:
        schedule = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrepError(f"cannot read {path}: {exc}") from exc
    if not isinstance(schedule, dict) or schedule.get("format") != FORMAT_VERSION:
        found = schedule.get("format") if isinstance(schedule, dict) else None
        raise PrepError(f"{path} has format {found!r}; this version reads format {FORMAT_VERSION}")
    schedule["steps"] = {int(t): list(books) for t, books in schedule["steps"].items()}
    return schedule


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PrepError(f"prepared directory {path.parent} is incomplete: {path.name} is missing")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PrepError(f"{path}:{lineno} is not valid JSON: {exc.msg}") from exc
    return rows


def _to_dataset(rows: list[dict[str, Any]], columns: dict[str, str]) -> datasets.Dataset:
    import datasets

    # from_dict with explicit features, rather than from_list, so an empty
    # selection still has the expected columns and types.
    features = datasets.Features({c: datasets.Value(t) for c, t in columns.items()})
    data = {c: [r[c] for r in rows] for c in columns}
    return datasets.Dataset.from_dict(data, features=features)


def _select(
    rows: list[dict[str, Any]], split: str | int | None, path: Path
) -> list[dict[str, Any]]:
    if split is None:
        return rows
    if isinstance(split, int) and not isinstance(split, bool):
        return [r for r in rows if r["role"] == "forget" and r["step"] == split]
    if split in ROLES:
        return [r for r in rows if r["role"] == split]
    raise PrepError(
        f"unknown split {split!r} for {path}; use None, a step number or one of {', '.join(ROLES)}"
    )


def load_windows(prepared_dir: str | Path, split: str | int | None = None) -> datasets.Dataset:
    """Return the windows of a prepared directory as a ``datasets.Dataset``.

    Args:
        prepared_dir: output of ``prepare_books``.
        split: ``None`` for all windows; a role (``"forget"``, ``"retain"``,
            ``"heldout"``) for that role's windows; an integer step for the
            forget set of that step.

    Returns:
        Columns ``book, role, step, window, prompt, continuation`` in file order.
    """
    root = _require_prepared(prepared_dir)
    rows = _select(_read_jsonl(root / WINDOWS_FILE), split, root)
    return _to_dataset(rows, _WINDOW_COLUMNS)


def read_window_rows(prepared_dir: str | Path, split: str | int | None = None) -> list[dict[str, Any]]:
    """The windows as plain dicts, in file order (what ``load_windows(...).to_list()`` gives).

    For callers that iterate over rows: building a ``datasets.Dataset`` only to turn it
    back into a list costs an Arrow round trip and the ``datasets`` import (~1 s).
    """
    root = _require_prepared(prepared_dir)
    rows = _select(_read_jsonl(root / WINDOWS_FILE), split, root)
    return [{c: r[c] for c in _WINDOW_COLUMNS} for r in rows]


def load_books(prepared_dir: str | Path) -> datasets.Dataset:
    """Return the cleaned books as a ``datasets.Dataset``.

    Columns ``book, role, step, n_words, n_windows, text``, one row per book,
    in schedule order.
    """
    root = _require_prepared(prepared_dir)
    return _to_dataset(_read_jsonl(root / BOOKS_FILE), _BOOK_COLUMNS)


def windows_for(prepared_dir: str | Path, books: list[str]) -> list[dict[str, Any]]:
    """Return the window rows of the named books as plain dicts, in file order.

    Raises:
        PrepError: a name is not a book of this prepared directory (a typo
            would otherwise silently select nothing).
    """
    if isinstance(books, str):  # a lone name, not its characters
        books = [books]
    root = _require_prepared(prepared_dir)
    rows = _read_jsonl(root / WINDOWS_FILE)
    known = {r["book"] for r in rows}
    unknown = sorted(set(books) - known)
    if unknown:
        raise PrepError(
            f"unknown book(s) {', '.join(unknown)} in {root}; known: {', '.join(sorted(known))}"
        )
    wanted = set(books)
    return [r for r in rows if r["book"] in wanted]


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def book_digests(prepared_dir: str | Path, books: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """What exactly a book is, for the takedown record: per book the sha256 of its raw file
    (recorded by ``prepare``; None for directories prepared before it was), of its cleaned
    text, and of its prepared windows (their lines of ``windows.jsonl``, in order).

    Raises:
        PrepError: a name is not a book of this prepared directory.
    """
    root = _require_prepared(prepared_dir)
    raw = load_schedule(root).get("raw_sha256", {})
    texts = {r["book"]: r["text"] for r in _read_jsonl(root / BOOKS_FILE)}
    lines: dict[str, list[str]] = {}
    for r in _read_jsonl(root / WINDOWS_FILE):
        lines.setdefault(r["book"], []).append(json.dumps(r, ensure_ascii=False, sort_keys=True))
    wanted = sorted(texts) if books is None else list(books)
    unknown = sorted(set(wanted) - set(texts))
    if unknown:
        raise PrepError(f"unknown book(s) {', '.join(unknown)} in {root}")
    return {b: {"raw_sha256": raw.get(b), "text_sha256": _sha256(texts[b]),
                "windows_sha256": _sha256("\n".join(lines.get(b, [])) + "\n")} for b in wanted}
