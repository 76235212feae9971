"""A run's "not yet removed" figures re-scored on the audit sides ``generic.others`` grades.

With ``generic.others`` a book not yet removed is graded on its audit side only (the other side
joined the recipe's retain pool, ssu/recipes/pool.py); runs without it are graded on all its
windows. This re-scores such a run's saved greedy continuations on the audit sides alone, so the
two are compared on the same windows:

    python experiments/deep/audit_side.py runs/deep/demo/seed0/ssu-deep runs/deep/demo/seed1/ssu-deep

Per step: the mean over the books not yet removed of ROUGE-L / the memorized model's (step 0) on
the same windows, and the smallest book's, on all windows and on the audit sides.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ssu.metrics import get_metric
from ssu.recipes.pool import other_splits
from ssu.recipes.run_dir import RunDir


def ratios(run: RunDir, step: int, audit_only: bool) -> dict[str, float]:
    rouge = get_metric("rougeL_f").fn
    splits = other_splits(run.config, step)

    def scores(t: int, books=None) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for line in (run.path / f"step_{t}" / "generations.jsonl").read_text().splitlines():
            g = json.loads(line)
            if (g["set"] == "future" if books is None else g["book"] in books) and \
                    (not audit_only or g["window"] in set(splits[g["book"]]["audit"])):
                out.setdefault(g["book"], []).append(rouge(g["output"], g["reference"]))
        return {b: float(np.mean(v)) for b, v in out.items()}

    now = scores(step)
    base = scores(0, set(now))
    return {b: now[b] / base[b] for b in now if base.get(b)}


def main() -> None:
    for path in sys.argv[1:]:
        run = RunDir(path)
        run.config.generic.others = max(run.config.generic.others, 1)  # the splits others would use
        steps = sorted(int(s) for s in run.manifest["steps"])
        for t in steps:
            cells = []
            for audit_only in (False, True):
                r = ratios(run, t, audit_only)
                cells.append(f"{np.mean(list(r.values())):.2f} / {min(r.values()):.2f}" if r else "-")
            print(f"{path} step {t}: all windows {cells[0]}, audit sides {cells[1]}")


if __name__ == "__main__":
    main()
