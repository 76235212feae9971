"""Which of a step's book tokens `suppress`'s rollouts may train down, by the retain rows they are checked against.

A decoded token is the book's when it completes an ``ngram``-token run of the book that no
retain row has and (``generic_ngram`` 1) is itself absent from every retain row. The retain
rows are the owner's retain texts plus the other books' pooled windows (``generic.others``)
and, with ``--generic-dir``, windows of general text (``generic.dir``, ``generic.windows``).
Printed per retain set: how many rows, the share of the book's continuation tokens that can be
flagged, and the commonest of them -- on real books with few retain rows, common words ("own",
"love", "man") are among them.

    python experiments/deep/flagged.py --model runs/gutenberg/memorized --data runs/gutenberg/prepared \\
        --step 1 --generic-dir runs/pw/corpus/train --windows 64 512
"""

from __future__ import annotations

import argparse
import collections


def main() -> None:
    from ssu.config import RunConfig, load
    from ssu.engine.forget_set import build_forget_set
    from ssu.methods.rollouts import book_flags, ngrams
    from ssu.models.loading import load_tokenizer
    from ssu.recipes.pool import checked, other_windows, protected_rows
    from ssu.recipes.step import step_windows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--others", type=int, default=64, help="generic.others (the preset's 64)")
    ap.add_argument("--ngram", type=int, default=4)
    ap.add_argument("--generic-ngram", type=int, default=1, help="suppress's generic_ngram (1: the token itself)")
    ap.add_argument("--generic-dir", help="general text: also check against its windows")
    ap.add_argument("--windows", type=int, nargs="*", default=[64, 512], help="generic.windows to try")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()

    def config(windows: int | None) -> RunConfig:
        generic = {"others": args.others, **({"dir": args.generic_dir, "windows": windows} if windows else {})}
        return load(RunConfig, {"model": args.model, "data": args.data, "seed": args.seed, "generic": generic})

    tok = load_tokenizer(args.model)
    books, windows, retain, _ = step_windows(args.data, args.step)
    cfg = config(None)
    pooled, _ = checked(cfg, args.step, other_windows(cfg, args.step))
    sets = {"retain texts + pooled windows": protected_rows(cfg, retain, pooled)}
    if args.generic_dir:  # the generic windows come before the pooled ones, as in a step
        sets.update({f"... + {n} general-text windows": protected_rows(config(n), retain, pooled)
                     for n in args.windows})
    for name, r in sets.items():
        fs = build_forget_set(args.step, windows, tok, with_random=False, retain=r, books=books, max_length=512)
        book = ngrams(fs.learn, args.ngram) - ngrams(fs.retain, args.ngram)
        generic = ngrams(fs.retain, args.generic_ngram)
        counts: collections.Counter = collections.Counter()
        flagged = total = 0
        for e in fs.learn:
            flags = book_flags(e.ids, e.n_prompt, book, args.ngram, generic, args.generic_ngram)
            flagged, total = flagged + sum(flags), total + len(flags)
            counts.update(tok.decode([e.ids[e.n_prompt + j]]) for j, f in enumerate(flags) if f)
        common = ", ".join(f"{t.strip()!r} {c}" for t, c in counts.most_common(args.top))
        print(f"{name}: {len(fs.retain)} rows; {flagged}/{total} = {flagged / max(total, 1):.2f} of the book's "
              f"tokens can be flagged; commonest: {common}")


if __name__ == "__main__":
    main()
