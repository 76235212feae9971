"""Benchmark: what the probes cost per step, in seconds and as a ratio to the step itself.

Reads the run directories of an ``ssu demo`` output (or any runs evaluated with probes): each
probe's rows carry the seconds it took (model loading included), each step's manifest entry
its own wall time (set up, train, extract, calibrate, save) and the greedy evaluation is timed
here by re-running it into a scratch copy. Run the demo alone on the machine first, so the
figures are not shared with other work:

    ssu demo --out runs/demo && python benchmarks/probe_cost.py runs/demo
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def probe_seconds(run: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("probe") and r.get("seconds") is not None:
            out.setdefault(r["step"], {})[r["probe"]] = r["seconds"]
    return out


def greedy_seconds(run: Path, step: int) -> float:
    """The step's greedy evaluation (text metrics only) timed on a scratch copy without its rows."""
    from ssu.recipes.evaluate import _evaluate_metrics

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("results.jsonl", "generations.jsonl",
                                                                 "probes.jsonl", "plots"))
        start = time.perf_counter()
        _evaluate_metrics(copy, step, False, ["rougeL_f"], False, None, None)
        return time.perf_counter() - start


def main(demo: Path) -> None:
    runs = sorted(p for p in demo.iterdir() if (p / "manifest.json").is_file())
    if not runs:
        sys.exit(f"error: no run directories under {demo}; run `ssu demo --out {demo}` first")
    print(f"{'run':<16}{'step':>5}{'step s':>9}{'greedy s':>10}  probes (s)" + " " * 38 + "probes / step")
    for run in runs:
        steps = json.loads((run / "manifest.json").read_text())["steps"]
        for t, seconds in sorted(probe_seconds(run).items()):
            step_s = steps.get(str(t), {}).get("timings", {}).get("total_seconds")
            total = sum(seconds.values())
            probes = ", ".join(f"{k} {v:.1f}" for k, v in sorted(seconds.items()))
            ratio = "-" if not step_s else f"{total / step_s:.2f}"
            print(f"{run.name:<16}{t:>5}{(step_s or 0):>9.1f}{greedy_seconds(run, t):>10.1f}  "
                  f"{probes + f' = {total:.1f}':<50}{ratio:>13}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "ssu-demo"))
