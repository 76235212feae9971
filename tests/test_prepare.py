"""Tests for data_prep: cleaning, windows, prepare_books, the readers, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_prep import PrepError, clean_text, make_windows, prepare_books
from data_prep.store import load_books, load_schedule, load_windows, windows_for
from data_prep.windows import count_words


def words(n: int, tag: str) -> str:
    """n distinct words, e.g. 'a0 a1 ...', seven to a line like a book."""
    lines = (" ".join(f"{tag}{i}" for i in range(j, min(j + 7, n))) for j in range(0, n, 7))
    return "\n".join(lines)


def make_books(root: Path, layout: dict[str, dict[str, str]]) -> Path:
    """Write a raw layout given as {subdir: {stem: text}}."""
    for sub, books in layout.items():
        for stem, text in books.items():
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{stem}.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def books_dir(tmp_path: Path) -> Path:
    return make_books(tmp_path / "books", {
        "time_step_1": {"b_book": words(45, "b"), "a_book": words(20, "a")},
        "time_step_2": {"c_book": words(25, "c")},
        "retain": {"r_book": words(20, "r")}, "heldout": {"h_book": words(20, "h")},
    })


OPTS = {"prompt_words": 5, "continuation_words": 5}

# --- cleaning ---------------------------------------------------------------
GUTENBERG = """\ufeffThe Project Gutenberg eBook of Tiny Tale

This eBook is for the use of anyone anywhere.

*** START OF THE PROJECT GUTENBERG EBOOK TINY
TALE ***

Produced by Jane Doe and the Online Distributed Proofreading Team

[Transcriber's Note: spelling
has been normalized.]

TINY TALE

It was a \u201cdark\u201d night\u2014the
dog\u2019s bark   was _loud_.

[Illustration: A dog
barking]

       *       *       *       *       *

Transcriber's Notes:

Italic text is denoted by _underscores_.

Obvious errors corrected.

*** END OF THE PROJECT GUTENBERG EBOOK TINY TALE ***

Section 1. General Terms of Use and Redistributing Project Gutenberg
"""


def test_clean_full_gutenberg_sample() -> None:
    assert clean_text(GUTENBERG) == "TINY TALE It was a \"dark\" night--the dog's bark was loud."


@pytest.mark.parametrize("raw, expected", [
    ("HOLMES ***\n\n\nThe Adventures\nof Holmes.", "The Adventures of Holmes."),
    ("Body text.\n\nEnd of the Project Gutenberg EBook of X\n\nlicence", "Body text."),
    ("Body.\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence", "Body."),
    ("No markers here, 3 * 4 = 12.", "No markers here, 3 * 4 = 12."),
    ("Transcriber's Note: typos fixed.\n\nReal text.", "Real text."),
    ("[Transcriber's note: a\n\nmulti-paragraph note] Real text.", "Real text."),
    ("Text.\n\n*  *  *\n\nMore.\n\nTRANSCRIBER'S NOTES\n\nNote one.\n\nNote two.\n", "Text. More."),
    ("\u2018a\u2019 \u201cb\u201d c\u2013d e\u2014f g\u2026", "'a' \"b\" c-d e--f g..."),
    ("_the_ woman, 10_s_., at E_{1} and E_{2}", "the woman, 10s., at E_{1} and E_{2}"),
    ("/* NIND \u201cMy dear friend, */\n\nText [Illustration] end.", "\"My dear friend, Text end."),
    ("  a  \n\n\n  b\tc\r\nd\u00a0e  ", "a b c d e"),
    ("Hello World", "Hello World"),
])
def test_clean_cases(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_clean_notes_heading_cannot_swallow_the_book() -> None:
    raw = "Transcriber's Notes:\n\nA short note.\n\n" + words(800, "w")
    assert clean_text(raw) == " ".join(words(800, "w").split())


def test_clean_lowercase_and_idempotent() -> None:
    assert clean_text("Hello World", lowercase=True) == "hello world"
    once = clean_text(GUTENBERG)
    assert clean_text(once) == once


# --- windows ----------------------------------------------------------------

def test_windows_counts_non_overlap_and_substrings() -> None:
    text = " ".join(f"w{i}" for i in range(45))
    wins = make_windows(text, 10, 10)
    assert len(wins) == 2  # 45 // 20; the 5-word tail is dropped
    pos = 0
    for k, (prompt, cont) in enumerate(wins):
        assert prompt.split() == [f"w{i}" for i in range(20 * k, 20 * k + 10)]
        assert cont.split() == [f"w{i}" for i in range(20 * k + 10, 20 * k + 20)]
        start = text.index(prompt + " " + cont, pos)  # in order, no overlap
        pos = start + len(prompt) + 1 + len(cont)
    assert "w40" not in " ".join(p + c for p, c in wins)
    assert len(make_windows(text, 10, 10, max_words=39)) == 1
    assert make_windows(text, 30, 30) == []
    assert count_words(text) == 45


def test_windows_are_exact_slices() -> None:
    text = 'He said,  "no"\tthen left. Again and again and again.'
    wins = make_windows(text, 3, 2)
    assert wins[0] == ('He said,  "no"', "then left.")
    assert wins[1] == ("Again and again", "and again.")
    with pytest.raises(ValueError):
        make_windows(text, 0, 2)


# --- prepare_books and the readers --------------------------------------------

def test_prepare_outputs_and_schedule(books_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    schedule = prepare_books(books_dir, out, max_words=40, **OPTS)
    assert schedule == {
        "format": 1, "steps": {"1": ["a_book", "b_book"], "2": ["c_book"]},
        "retain": ["r_book"], "heldout": ["h_book"], "prompt_words": 5,
        "continuation_words": 5, "max_words": 40, "lowercase": False,
        "source": str(books_dir.resolve()),
        # each raw file's bytes, for the takedown record
        "raw_sha256": {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in books_dir.rglob("*.txt")},
    }
    assert json.loads((out / "schedule.json").read_text()) == schedule
    loaded = load_schedule(out)
    assert loaded["steps"] == {1: ["a_book", "b_book"], 2: ["c_book"]}

    rows = [json.loads(line) for line in (out / "windows.jsonl").read_text().splitlines()]
    order = [(r["book"], r["window"]) for r in rows]
    assert order == [("a_book", 0), ("a_book", 1), ("b_book", 0), ("b_book", 1), ("b_book", 2),
                     ("b_book", 3), ("c_book", 0), ("c_book", 1), ("r_book", 0), ("r_book", 1),
                     ("h_book", 0), ("h_book", 1)]
    assert rows[2] == {"book": "b_book", "role": "forget", "step": 1, "window": 0,
                       "prompt": "b0 b1 b2 b3 b4", "continuation": "b5 b6 b7 b8 b9"}
    assert {(r["role"], r["step"]) for r in rows if r["book"] == "r_book"} == {("retain", 0)}

    books = {b["book"]: b for b in map(json.loads, (out / "books.jsonl").read_text().splitlines())}
    assert books["b_book"]["n_words"] == 40 and books["b_book"]["n_windows"] == 4
    assert books["b_book"]["text"] == " ".join(f"b{i}" for i in range(40))
    assert books["h_book"]["role"] == "heldout"


def test_readers_return_datasets(books_dir: Path, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "prep"
    prepare_books(books_dir, out, **OPTS)
    ds = load_windows(out)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["book", "role", "step", "window", "prompt", "continuation"]
    assert len(ds) == 2 + 4 + 2 + 2 + 2
    assert set(load_windows(out, split="forget")["book"]) == {"a_book", "b_book", "c_book"}
    assert load_windows(out, split=2)["book"] == ["c_book", "c_book"]
    assert load_windows(out, split="heldout")["book"] == ["h_book", "h_book"]
    assert len(load_windows(out, split=9)) == 0
    books = load_books(out)
    assert books["book"] == ["a_book", "b_book", "c_book", "r_book", "h_book"]
    assert books["n_words"][1] == 45
    assert [w["window"] for w in windows_for(out, ["c_book", "a_book"])] == [0, 1, 0, 1]
    with pytest.raises(PrepError, match="nope"):
        windows_for(out, ["nope"])
    with pytest.raises(PrepError, match="unknown split"):
        load_windows(out, split="train")
    with pytest.raises(PrepError, match="not a prepared directory.*ssu prepare"):
        load_windows(books_dir)


def test_prepare_is_deterministic_and_overwrite(books_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare_books(books_dir, a, **OPTS)
    prepare_books(books_dir, b, **OPTS)
    for name in ("windows.jsonl", "books.jsonl", "schedule.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert sorted(p.name for p in a.iterdir()) == ["books.jsonl", "schedule.json", "windows.jsonl"]
    prepare_books(books_dir, a, lowercase=True, overwrite=True, **OPTS)
    assert load_schedule(a)["lowercase"] is True


def test_bom_and_multiline_book_accepted(tmp_path: Path) -> None:
    put(books := tmp_path / "books", "time_step_1/x.txt", b"\xef\xbb\xbf" + words(10, "x").encode())
    prepare_books(books, tmp_path / "out", **OPTS)
    assert load_books(tmp_path / "out")["text"] == [" ".join(f"x{i}" for i in range(10))]


# --- every bad input: PrepError naming the culprit, and no output dir ----------

def put(d: Path, rel: str, data: bytes | str) -> None:
    """Create books_dir/rel with ``data`` (text is UTF-8 encoded)."""
    (d / rel).parent.mkdir(parents=True, exist_ok=True)
    (d / rel).write_bytes(data.encode() if isinstance(data, str) else data)


def mv(d: Path, *pairs: tuple[str, str]) -> None:
    for src, dst in pairs:
        (d / src).rename(d / dst)


BAD_INPUTS = {
    # name: (mutation of a valid books dir, text the message must contain)
    "missing_dir": (lambda d: d.rename(d.with_name("gone")), "books does not exist"),
    "not_a_dir": (lambda d: (d.rename(d.with_name("x")), d.write_text("hi")),
                  "books is not a directory"),
    "empty_dir": (lambda d: [p.rename(d.parent / p.name) for p in d.iterdir()],
                  "books has no time_step_<n> directories"),
    "step_without_txt": (lambda d: put(d, "time_step_3/notes.md", "x"),
                         "time_step_3 contains no .txt"),
    "empty_book": (lambda d: put(d, "time_step_2/empty.txt", b""), "empty.txt has no text"),
    "whitespace_book": (lambda d: put(d, "time_step_1/ws.txt", " \n\t\r\n "), "ws.txt has no text"),
    "binary_book": (lambda d: put(d, "time_step_2/bin.txt", b"PK\x03\x04\x00\x00ab"),
                    "bin.txt is a binary file"),
    "latin1_book": (lambda d: put(d, "retain/lat.txt", "caf\u00e9 ".encode("latin-1") * 9),
                    "lat.txt is not valid UTF-8"),
    "short_book": (lambda d: put(d, "time_step_2/short.txt", "one two three"),
                   "short.txt has 3 words after cleaning, fewer than one window (10 words"),
    "same_stem_two_steps": (lambda d: put(d, "time_step_2/a_book.txt", words(30, "z")),
                            "'a_book' appears twice"),
    "same_stem_step_and_heldout": (lambda d: put(d, "heldout/c_book.txt", words(30, "q")),
                                   "'c_book' appears twice"),
    "same_text_other_name": (lambda d: put(d, "time_step_2/copy.txt", words(20, "a")),
                             "copy.txt (step 2) has the same text as"),
    "same_text_in_retain": (lambda d: put(d, "retain/copy2.txt", words(25, "c")),
                            "copy2.txt (retain) has the same text"),
    "step_gap": (lambda d: mv(d, ("time_step_2", "time_step_3")), "step 2 missing in"),
    "starts_at_2": (lambda d: mv(d, ("time_step_2", "time_step_3"), ("time_step_1", "time_step_2")),
                    "must start at time_step_1"),
    "bad_step_name": (lambda d: put(d, "time_step_two/x.txt", "x"), "time_step_two"),
    "retain_is_file": (lambda d: (mv(d, ("retain", "old")), put(d, "retain", "x")),
                       "retain is not a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_and_writes_nothing(case: str, books_dir: Path, tmp_path: Path) -> None:
    mutate, expected = BAD_INPUTS[case]
    mutate(books_dir)
    out = tmp_path / "prep"
    with pytest.raises(PrepError) as info:
        prepare_books(books_dir, out, **OPTS)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep")]  # no temp dir left


def test_existing_out_dir_and_books_dir_are_kept(books_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(PrepError, match="prep already exists"):
        prepare_books(books_dir, out, **OPTS)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(PrepError, match="would replace the books directory"):
        prepare_books(books_dir, books_dir, overwrite=True, **OPTS)
    assert (books_dir / "time_step_1" / "a_book.txt").exists()


def test_failed_overwrite_keeps_previous_output(books_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    prepare_books(books_dir, out, **OPTS)
    before = (out / "windows.jsonl").read_bytes()
    put(books_dir, "time_step_2/bin.txt", b"\x00")
    with pytest.raises(PrepError, match="bin.txt"):
        prepare_books(books_dir, out, overwrite=True, **OPTS)
    assert (out / "windows.jsonl").read_bytes() == before


@pytest.mark.parametrize("opts, expected", [
    ({"prompt_words": 0, "continuation_words": 5}, "prompt_words"),
    ({"prompt_words": 5, "continuation_words": 5, "max_words": 9}, "max_words"),
])
def test_bad_options(opts: dict, expected: str, books_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match=expected):
        prepare_books(books_dir, tmp_path / "prep", **opts)
    assert not (tmp_path / "prep").exists()



def test_request_files_name_the_takedown_and_bad_ones_are_refused(books_dir: Path, tmp_path: Path) -> None:
    (books_dir / "time_step_2" / "request.json").write_text('{"id": "REQ-7", "note": "rights holder"}')
    schedule = prepare_books(books_dir, tmp_path / "ok", max_words=40, **OPTS)
    assert schedule["requests"] == {"2": {"id": "REQ-7", "note": "rights holder"}}
    for bad in ('{"id": 7}', '{"ticket": "x"}', "not json"):
        (books_dir / "time_step_2" / "request.json").write_text(bad)
        with pytest.raises(PrepError, match="request.json"):
            prepare_books(books_dir, tmp_path / "bad", max_words=40, **OPTS)
        assert not (tmp_path / "bad").exists()
