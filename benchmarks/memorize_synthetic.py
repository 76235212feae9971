"""Benchmark: how fast a tiny model memorizes a corpus (the unlearning target).

Runs synth (or a real books dir) -> prepare -> tiny-model -> memorize through the
same functions the CLI uses, and prints wall time per stage and per-book greedy
ROUGE-L. Targets (issue 2): synthetic 6 books reach ROUGE-L >= 0.9 on every book
within 3 minutes on a 2-core CPU; Gutenberg excerpts of 600 words reach >= 0.8.

    python benchmarks/memorize_synthetic.py                     # synthetic corpus
    python benchmarks/memorize_synthetic.py --books-dir ../shared/data/gutenberg \
        --max-words 600 --target-rouge 0.8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_prep import prepare_books, write_synthetic_corpus
from ssu.models.tiny import make_tiny_model
from ssu.recipes.memorize import MemorizeConfig, memorize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books-dir", help="raw books layout; default: a synthetic corpus")
    ap.add_argument("--books", type=int, default=6)
    ap.add_argument("--words-per-book", type=int, default=1000)
    ap.add_argument("--max-words", type=int, default=None)
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--target-rouge", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--work-dir", default=None)
    args = ap.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ssu-bench-"))
    timings = {}
    t = time.perf_counter()
    books = args.books_dir
    if books is None:
        books = write_synthetic_corpus(work / "corpus", n_books=args.books, seed=0,
                                       words_per_book=args.words_per_book)
    prepare_books(books, work / "prepared", max_words=args.max_words)
    timings["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    make_tiny_model(work / "prepared", work / "tiny", arch=args.arch, size=args.size)
    timings["tiny-model"] = time.perf_counter() - t
    t = time.perf_counter()
    record = memorize(str(work / "tiny"), work / "prepared", work / "memorized",
                      MemorizeConfig(epochs=args.epochs, target_rouge=args.target_rouge, device="cpu"),
                      progress=False)
    timings["memorize"] = time.perf_counter() - t

    print(f"corpus: {books}  ({record['n_windows']} windows, model {args.arch}/{args.size})")
    for stage, s in timings.items():
        print(f"  {stage:<11} {s:7.1f} s")
    print(f"  {'total':<11} {sum(timings.values()):7.1f} s   epochs run: {record['epochs_run']}")
    scores = record["rougeL_by_book"]
    for book, v in sorted(scores.items()):
        print(f"  {book:<24} ROUGE-L {v:.3f}")
    ok = record["target_reached"]
    print(f"min ROUGE-L {min(scores.values()):.3f} (target {args.target_rouge}: {'met' if ok else 'NOT met'})")
    print(f"work dir: {work}")


if __name__ == "__main__":
    main()
