"""Build a generic-English pretraining corpus from Debian documentation packages.

Why: unlearning measured on a model that knows nothing but the books it memorized
is unrealistic; a model pretrained on generic text first has general knowledge to
lose. Debian's documentation packages are freely licensed, reachable through
``apt-get download`` (no root needed), and contain tens of MB of English prose.

Steps: download the .deb files, extract them with ``dpkg-deb -x``, read only the
files each package's rule selects (one format per package, so the same manual is
not read twice as HTML and as text), strip markup, normalise whitespace, drop tiny
and link-list documents, deduplicate identical texts, and write one plain-text file
per document into OUT/train/ and OUT/heldout/ (split by a hash of the document's
path, ~2 % held out), plus OUT/corpus.json. OUT appears only when complete.

    python experiments/pretrained_world/build_corpus.py OUT [--books-out DIR]
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from ssu.io import atomic_dir, atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from textclean import (  # noqa: E402
    html_to_text,
    normalise,
    plain_to_text,
    pod_to_text,
    prose_score,
    rst_to_text,
)

# package -> (regex on the path inside the package, format). Where a package ships
# a manual in several formats the rule picks the one that strips most cleanly
# (reST sources over Sphinx HTML, POD over man pages), and only English files.
SOURCES = {
    "python3.11-doc": (r"usr/share/doc/python3\.11/html/_sources/.*\.rst\.txt$", "rst"),
    "perl-doc": (r"usr/share/perl/[^/]+/pod/.*\.pod$", "pod"),
    "debian-reference-en": (r"usr/share/debian-reference/.*\.en\.html$", "html"),
    "debian-handbook": (r"usr/share/doc/debian-handbook/html/en-US/.*\.html$", "html"),
    "gnu-standards": (r"usr/share/doc/gnu-standards/.*\.text\.gz$", "text"),
    "bash-doc": (r"usr/share/doc/bash/bashref\.html$", "html"),
    "git-doc": (r"usr/share/doc/git-doc/.*\.txt$", "text"),
    "debian-policy": (r"usr/share/doc/debian-policy/policy\.html/_sources/.*\.rst\.txt$", "rst"),
    "developers-reference": (r"usr/share/developers-reference/_sources/.*\.rst\.txt$", "rst"),
    "maint-guide": (r"usr/share/doc/maint-guide/html/.*\.en\.html$", "html"),
    "debian-faq": (r"usr/share/doc/debian/FAQ/.*\.en\.html$", "html"),
    "debian-history": (r"usr/share/doc/debian-history/docs/.*\.en\.html$", "html"),
    "postgresql-doc-15": (r"usr/share/doc/postgresql-doc-15/html/.*\.html$", "html"),
    "zsh-doc": (r"usr/share/doc/zsh-common/html/.*\.html$", "html"),
    "vim-doc": (r"usr/share/doc/vim/html/.*\.html$", "html"),
}
# Generated index and search pages: lists of links, never prose.
BOILERPLATE_NAMES = re.compile(r"(^|/)(genindex|search|py-modindex|bookindex|ix\d+|perltoc)[^/]*$")
MIN_WORDS = 100  # smaller documents are stubs (redirects, empty chapter heads)
MIN_PROSE = 0.2  # below this a document is a link list or table of contents (index pages ~0.15)
HELDOUT_PER_MILLE = 20  # ~2 % of documents held out
# Packages whose long documents read most like books, best first (for --books-out).
BOOK_PACKAGES = ("debian-handbook", "debian-reference-en", "developers-reference", "maint-guide")
BOOK_MIN_WORDS = 3000


class CorpusError(Exception):
    """Bad input or a failed external command: reported in one line, exit status 1."""


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CorpusError(f"{' '.join(cmd[:3])} ... failed: {last}")
    return out.stdout


def download(packages: list[str], debs: Path) -> dict[str, Path]:
    """``apt-get download`` the packages missing from ``debs``; package -> .deb path."""
    have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    missing = [p for p in packages if p not in have]
    if missing:
        _run(["apt-get", "download", *missing], cwd=debs)
        have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    lost = [p for p in packages if p not in have]
    if lost:
        raise CorpusError(f"apt-get download gave no .deb for: {', '.join(lost)}")
    return {p: have[p] for p in packages}


def split_of(doc_id: str) -> str:
    """Deterministic split: the same document path always lands in the same split."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return "heldout" if h % 1000 < HELDOUT_PER_MILLE else "train"


def read_source(path: Path, fmt: str) -> str:
    if fmt == "pod":
        return pod_to_text(str(path))
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if fmt == "html":
        return html_to_text(text)
    if fmt == "rst":
        return rst_to_text(text)
    return plain_to_text(text)


def slug_of(doc_id: str) -> str:
    """A file-name-safe, readable name: package plus the file's stem."""
    pkg, _, rel = doc_id.partition("/")
    stem = re.sub(r"(\.(en|html?|rst|txt|text|pod|gz))+$", "", Path(rel).name)
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{pkg}-{stem}").strip("-").lower()


def file_name(doc_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id.replace("/", "__"))
    return (name[:180] if len(name) > 180 else name) + ".txt"


def collect(debs: dict[str, Path], work: Path, stats: dict) -> list[dict]:
    """Extract every package and return the kept documents, sorted by id."""
    docs, seen = [], set()
    for pkg, deb in sorted(debs.items()):
        pattern, fmt = SOURCES[pkg]
        root = work / pkg
        root.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        rule = re.compile(pattern)
        counts = {"files": 0, "kept": 0, "tiny": 0, "boilerplate": 0, "duplicate": 0}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            # Symlinks are aliases of files already read (e.g. FAQ/x.html -> x.en.html).
            if path.is_symlink() or not path.is_file() or not rule.search(rel):
                continue
            counts["files"] += 1
            if BOILERPLATE_NAMES.search(rel):
                counts["boilerplate"] += 1
                continue
            text = normalise(read_source(path, fmt))
            words = len(text.split())
            if words < MIN_WORDS:
                counts["tiny"] += 1
                continue
            if prose_score(text) < MIN_PROSE:
                counts["boilerplate"] += 1
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                counts["duplicate"] += 1
                continue
            seen.add(digest)
            doc_id = f"{pkg}/{rel}"
            docs.append({"id": doc_id, "text": text, "words": words, "split": split_of(doc_id)})
            counts["kept"] += 1
        stats["packages"][pkg] = {"version": _run(["dpkg-deb", "-f", str(deb), "Version"]).strip(),
                                  **counts}
        shutil.rmtree(root)  # extracted trees are ~200 MB together; keep the temp dir small
    return sorted(docs, key=lambda d: d["id"])


def pick_books(docs: list[dict], split: str, n: int) -> list[dict]:
    """The n most book-like long documents of a split (preferred packages first)."""
    def rank(d):
        pkg = d["id"].split("/")[0]
        pref = BOOK_PACKAGES.index(pkg) if pkg in BOOK_PACKAGES else len(BOOK_PACKAGES)
        return (pref, -round(prose_score(d["text"]), 2), d["id"])

    cands = [d for d in docs if d["split"] == split and d["words"] >= BOOK_MIN_WORDS
             and prose_score(d["text"]) >= 0.5]
    if len(cands) < n:
        raise CorpusError(f"only {len(cands)} {split} documents of >= {BOOK_MIN_WORDS} "
                          f"prose-like words; need {n} for --books-out")
    return sorted(cands, key=rank)[:n]


def write_books(docs: list[dict], books_out: Path, overwrite: bool) -> dict:
    """Copy 2 train documents as retain books and 2 held-out ones as heldout books."""
    chosen = {"retain": pick_books(docs, "train", 2), "heldout": pick_books(docs, "heldout", 2)}
    slugs = [slug_of(d["id"]) for books in chosen.values() for d in books]
    if len(set(slugs)) != len(slugs):  # would silently overwrite one book with another
        raise CorpusError(f"book slugs collide: {', '.join(slugs)}")
    with atomic_dir(books_out, overwrite=overwrite) as tmp:
        for kind, books in chosen.items():
            (tmp / kind).mkdir()
            for d in books:
                (tmp / kind / f"{slug_of(d['id'])}.txt").write_text(d["text"], encoding="utf-8")
    return {kind: [{"slug": slug_of(d["id"]), "source": d["id"], "words": d["words"]}
                   for d in books] for kind, books in chosen.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--packages", default=",".join(SOURCES), show_default=True,
              help="Comma-separated subset of the known packages.")
@click.option("--debs", type=click.Path(path_type=Path), default=None,
              help="Folder to keep downloaded .deb files in and reuse (default: a temp dir).")
@click.option("--books-out", type=click.Path(path_type=Path), default=None,
              help="Also write 2 train documents to DIR/retain/ and 2 held-out ones to DIR/heldout/.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (and --books-out DIR).")
def main(out: Path, packages: str, debs: Path | None, books_out: Path | None, overwrite: bool):
    """Download Debian doc packages and write a plain-text corpus to OUT."""
    try:
        build(out, packages, debs, books_out, overwrite)
    except (CorpusError, OSError) as e:
        raise click.ClickException(str(e)) from None


def build(out: Path, packages: str, debs: Path | None, books_out: Path | None, overwrite: bool):
    pkgs = [p.strip() for p in packages.split(",") if p.strip()]
    unknown = [p for p in pkgs if p not in SOURCES]
    if not pkgs or unknown:
        raise CorpusError(f"unknown package(s) {', '.join(unknown) or '(none given)'}; "
                          f"known: {', '.join(SOURCES)}")
    # Check both destinations before spending minutes on downloads.
    for dest in (out, books_out):
        if dest is not None and dest.exists() and not overwrite:
            raise CorpusError(f"{dest} already exists (use --overwrite to replace it)")
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise CorpusError("apt-get and dpkg-deb are needed (a Debian-based system)")
    stats: dict = {"packages": {}, "rules": {p: SOURCES[p][0] for p in pkgs}}
    with tempfile.TemporaryDirectory(prefix="pw_corpus_") as tmp_s:
        tmp = Path(tmp_s)
        deb_dir = debs or tmp / "debs"
        deb_dir.mkdir(parents=True, exist_ok=True)
        docs = collect(download(pkgs, deb_dir), tmp / "x", stats)
    if not docs:
        raise CorpusError("no document survived the filters")
    splits = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split in ("train", "heldout"):
            (tmp / split).mkdir()
            part = [d for d in docs if d["split"] == split]
            for d in part:
                (tmp / split / file_name(d["id"])).write_text(d["text"], encoding="utf-8")
            splits[split] = {"docs": len(part), "words": sum(d["words"] for d in part),
                             "bytes": sum(len(d["text"].encode()) for d in part)}
        stats["splits"] = splits
        stats["filters"] = {"min_words": MIN_WORDS, "min_prose": MIN_PROSE,
                            "heldout_per_mille": HELDOUT_PER_MILLE}
        if books_out is not None:
            stats["books"] = write_books(docs, books_out, overwrite)
        atomic_write_json(tmp / "corpus.json", stats)
    for split, s in splits.items():
        print(f"{split}: {s['docs']} docs, {s['words']:,} words, {s['bytes'] / 1e6:.1f} MB")
    print(f"wrote {out}" + (f" and {books_out}" if books_out else ""))


if __name__ == "__main__":
    main()
