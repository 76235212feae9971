"""The pretrained world: books memorized on a pretrained Llama with generic text mixed in, then unlearned.

Stages (each skipped when its output exists, so the script resumes after a crash):

1. a books layout under OUT/books: the Gutenberg books as ``time_step_*`` (by symlink, never
   copied into the repository) plus the retain and held-out generic texts that
   ``build_corpus.py --books-out`` wrote;
2. ``ssu prepare`` (``--max-words`` per book);
3. ``ssu memorize`` of the pretrained model with the generic training text mixed in
   (``--generic``), reporting held-out perplexity before and after;
4. per method, ``ssu init`` + evaluation of step 0 + ``--steps`` time steps, each evaluated.

Then it prints, per method and step, the mean ROUGE-L of the book removed now, of books
removed earlier, of books not yet removed and of retained books, and the held-out
perplexity, and writes them to OUT/summary.json and OUT/summary.md.

    python experiments/pretrained_world/run_world.py --pretrained runs/pw/pretrained \\
        --corpus runs/pw/corpus --extra runs/pw/books_extra --out runs/pretrained_world
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SETS = (("removed-now", "removed now"), ("removed-earlier", "removed earlier"),
        ("future", "not yet removed"), ("retain", "retained"))


def ssu(*args: str) -> None:
    """One stage through the CLI, exactly as a user runs it; a failure stops the script."""
    print("+ ssu " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "ssu.cli", *args], check=True)


def books_layout(out: Path, books: Path, extra: Path) -> Path:
    layout = out / "books"
    if layout.exists():
        return layout
    tmp = out / "books.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for d in sorted(books.glob("time_step_*")):
        (tmp / d.name).symlink_to(d.resolve())
    for role in ("retain", "heldout"):
        src = extra / role
        if src.is_dir():
            (tmp / role).mkdir(exist_ok=True)
            for f in sorted(src.glob("*.txt")):
                (tmp / role / f.name).write_text(f.read_text())
    tmp.rename(layout)
    return layout


def summary(run: Path, steps: int) -> list[dict]:
    from ssu.recipes.evaluate import load_results

    rows = load_results(run)
    out = []
    for t in range(0, steps + 1):
        def mean(metric: str, sets: tuple[str, ...], t: int = t) -> float | None:
            v = [r["value"] for r in rows if r["step"] == t and r["metric"] == metric and r["set"] in sets
                 and r["book"] != "*"]
            return sum(v) / len(v) if v else None

        out.append({"step": t, **{k: mean("rougeL_f", (k,)) for k, _ in SETS},
                    "heldout_ppl": mean("perplexity", ("heldout",))})
    return out


def table(results: dict[str, list[dict]], memorize: dict) -> str:
    def cell(v):
        return "—" if v is None else (f"{v:.3g}" if v > 10 else f"{v:.3f}")

    lines = []
    for name, p in memorize.get("heldout_perplexity", {}).items():
        lines.append(f"Memorization: held-out perplexity ({name}) {p['before']:.4g} -> {p['after']:.4g}")
    lines += ["", "| method | step | " + " | ".join(h for _, h in SETS) + " | held-out ppl |",
              "|---|---:|" + "---:|" * (len(SETS) + 1)]
    for method, rows in results.items():
        for r in rows:
            lines.append(f"| {method} | {r['step']} | " + " | ".join(cell(r[k]) for k, _ in SETS)
                         + f" | {cell(r['heldout_ppl'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", required=True, type=Path)
    ap.add_argument("--corpus", required=True, type=Path, help="build_corpus.py output (its train/ is mixed in)")
    ap.add_argument("--extra", required=True, type=Path, help="build_corpus.py --books-out (retain/, heldout/)")
    ap.add_argument("--books", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/gutenberg")
    ap.add_argument("--out", type=Path, default=Path("runs/pretrained_world"))
    ap.add_argument("--max-words", type=int, default=1000)
    # 50 + 50 words (~200 tokens) fit the CPU-size model's 256-token context; the reference
    # protocol's 100 + 100 (~390 tokens) would run past every position it was pretrained on.
    ap.add_argument("--window-words", type=int, default=50, help="prompt words = continuation words")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=["ssu", "ssu-stable"])
    ap.add_argument("--memorize", nargs=argparse.REMAINDER, default=[],
                    help="extra `ssu memorize` options (last on the line)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every method")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    layout = books_layout(args.out, args.books, args.extra)
    prepared, memorized = args.out / "prepared", args.out / "memorized"
    if not prepared.exists():
        ssu("prepare", str(layout), str(prepared), "--max-words", str(args.max_words),
            "--prompt-words", str(args.window_words), "--continuation-words", str(args.window_words))
    if not memorized.exists():
        ssu("memorize", str(args.pretrained), str(prepared), str(memorized), "--generic",
            str(args.corpus / "train"), "--device", "cpu", *args.memorize)
    memo = json.loads((memorized / "memorize.json").read_text())
    print(f"[{time.perf_counter() - t0:6.0f}s] memorized: {memo['rougeL_by_book']}", flush=True)
    results = {}
    for method in args.methods:
        run = args.out / f"run-{method}"
        if not (run / "config.json").exists():
            sets = [x for s in args.sets for x in ("--set", s)]
            ssu("init", str(run), "--model", str(memorized), "--data", str(prepared), "--method", method,
                "--set", "device=cpu", "--set", "train.finetune=full", *sets)
        ssu("eval", str(run), "0")
        for t in range(1, args.steps + 1):
            ssu("step", str(run), str(t))  # evaluates after the step; skipped when already complete
        results[method] = summary(run, args.steps)
        print(f"[{time.perf_counter() - t0:6.0f}s] {method} done", flush=True)
    text = table(results, memo)
    print(text)
    (args.out / "summary.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps({"memorize": memo.get("heldout_perplexity"),
                                                       "results": results}, indent=1))
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
