"""Where the books not yet removed first leave their text after a step, and what word they lose there.

For every audit window of a book not yet removed whose greedy continuation (``generations.jsonl``)
leaves the memorized text earlier at step t than at step t − 1, prints the words before the
first divergence, the word lost and what came instead, and whether that word is in the text of a
book removed by then and in the retain texts. Words (not tokens) are compared, so a word that
comes out misspelt ("militarism" -> "midations") shows as lost where its pieces were:

    python experiments/deep/divergence.py runs/deep/gutenberg/seed0/onpolicy-generic1-capped --steps 1 2 3 4 5

On Gutenberg (seed 0, the preset) the first steps lose common words the removed book also has
("she", "love": trained down as the book's own), later ones rare words misspelt in books that never
shared them ("verdict", "Sensibility" -> "Sensibm"): what ``word_starts`` and ``train.frozen``
address (experiments/deep/findings/gutenberg.md).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def words(text: str) -> list[str]:
    """Words and punctuation marks as written -- not the metrics' ``normalize_words``, which drops
    both case and punctuation, and a lost comma is one of the things looked for here."""
    return re.findall(r"\w+|[^\w\s]", text)


def future(run: Path, step: int) -> dict[tuple[str, int], dict]:
    with open(run / f"step_{step}" / "generations.jsonl") as f:
        return {(g["book"], g["window"]): g for g in map(json.loads, f) if g["set"] == "future"}


def first_divergence(ref: list[str], out: list[str]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    args = ap.parse_args()
    data = Path(json.loads((args.run / "config.json").read_text())["config"]["data"])
    schedule = json.loads((data / "schedule.json").read_text())
    with open(data / "windows.jsonl") as f:
        windows = [json.loads(line) for line in f]
    retain = {w for x in windows if x["role"] == "retain" for w in words(x["prompt"] + " " + x["continuation"])}
    for t in args.steps:
        removed = {b for s in range(1, t + 1) for b in schedule["steps"][str(s)]}
        book = {w for x in windows if x["book"] in removed for w in words(x["continuation"])}
        now, before = future(args.run, t), future(args.run, t - 1)
        print(f"step {t}")
        for key, g in sorted(now.items()):
            ref, out = words(g["reference"]), words(g["output"])
            d, was = first_divergence(ref, out), first_divergence(ref, words(before[key]["output"]))
            if d is None or (was is not None and was <= d):
                continue
            lost = ref[d]
            print(f"  {key[0]} window {key[1]}: at word {d} (before: {was}) {' '.join(ref[max(0, d - 4):d])} "
                  f"[{lost}] -> {out[d]!r}; in a removed book: {lost in book}, in the retain texts: {lost in retain}")


if __name__ == "__main__":
    main()
