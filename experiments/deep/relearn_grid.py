"""Re-run the ``relearn`` probe of finished runs over a grid of learning rates.

The relearning probe of ``run.py`` takes 6 AdamW steps at lr 1e-3, the rate that relearns
the demo world's books. In the pretrained world (a 3.9M Llama) those steps took a removed
book from greedy ROUGE-L 0.73 to 0.13: the rate wiped the book out rather than bringing it
back, so its relearning figures read as removal. This re-runs the probe, in place, at every
step of the given runs (``--reference``: retrain references, ``OUT/seed<N>/retrain/step_T``,
their base model at step T) with the attacker's grid (``relearn.lrs``: per step the rate
whose removed windows come back furthest); every row it writes records the grid in
``probe_args``, while the run's config.json still names lr 1e-3.

    python experiments/deep/relearn_grid.py runs/deep/pretrained/seed0/onpolicy-generic1-capped \\
        runs/deep/pretrained/seed1/onpolicy-generic1-capped
    python experiments/deep/relearn_grid.py runs/deep/gutenberg/seed0/onpolicy-generic1-capped \\
        --reference runs/deep/gutenberg/seed0/retrain/step_*

The probe is ``run.py``'s (``RELEARN``: 6 steps, batch 2, rates 3e-5, 1e-4, 3e-4, 1e-3); ``--lrs``
takes another grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from run import RELEARN

    from ssu.config import ComponentSpec
    from ssu.recipes.probe import probe_step
    from ssu.recipes.run_dir import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--lrs", nargs="+", type=float, default=RELEARN["lrs"])
    ap.add_argument("--reference", nargs="*", type=Path, default=[],
                    help="retrain references (their eval/ run, probed at their step as the base itself)")
    args = ap.parse_args()
    spec = ComponentSpec("relearn", {**RELEARN, "lrs": args.lrs})
    jobs = [(path, t, False) for path in args.runs for t in sorted(RunDir(path).completed_steps())]
    jobs += [(ref / "eval", int(ref.name.split("_")[1]), True) for ref in args.reference]
    for path, t, base_only in jobs:
        started = time.perf_counter()
        rows = probe_step(path, t, [spec], progress=False, force=True, base_only=base_only)
        got = [round(r["value"], 3) for r in rows if r["metric"] == "probe:relearn" and r["set"] == "removed-now"]
        grid = [json.loads(line) for line in (path / f"step_{t}" / "probes.jsonl").read_text().splitlines()]
        by_lr = next((r["detail"]["by_lr"] for r in grid if r["metric"] == "probe:relearn" and r.get("detail")), None)
        print(f"{path} step {t}: the removed book relearned {got}; every removed book's mean by lr {by_lr} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
