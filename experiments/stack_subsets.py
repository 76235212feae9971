"""Which steps' vectors, together, cause the damage? ROUGE-L for every subset of a run's stack.

For a run with completed steps 1..T, composes base + sum of the vectors of each
subset of the steps, the empty one (the base) included (the others at alpha 0, as ``ssu compose --alpha T=0``
does) and prints the mean greedy ROUGE-L of the removed and retain books. On the
tiny synthetic models it shows that each vector alone is fairly selective while any
two together damage the retain books (see the README's known limitation).

    python experiments/stack_subsets.py RUN_DIR [--books synth_01,synth_02,retain_01]
"""

from __future__ import annotations

import argparse
import itertools

from data_prep import read_window_rows
from ssu.eval.memorization import rouge_by_book
from ssu.models.loading import load_tokenizer
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--books", default=None, help="comma-separated; default: the removed and retain books")
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    steps = sorted(run.completed_steps())
    windows = read_window_rows(run.config.data)
    records = {s: run.step_record(s) for s in steps}
    removed = sorted({b for r in records.values() for b in r["books"]})
    books = args.books.split(",") if args.books else removed + sorted({w["book"] for w in windows
                                                                     if w["role"] == "retain"})
    windows = [w for w in windows if w["book"] in books]
    tokenizer = load_tokenizer(run.config.model, run.config.trust_remote_code)
    print(f"{'vectors applied':<16}" + "".join(f"{b:>11}" for b in books))
    for n in range(0, len(steps) + 1):
        for subset in itertools.combinations(steps, n):
            alphas = {s: (records[s]["alpha"] if s in subset else 0.0) for s in steps}
            model = load_composed(run, alphas=alphas).eval()
            scores = rouge_by_book(model, tokenizer, windows, run.config.train.max_length)
            label = "+".join(f"v{s}" for s in subset) or "none"
            print(f"{label:<16}" + "".join(f"{scores[b]:>11.3f}" for b in books), flush=True)


if __name__ == "__main__":
    main()
