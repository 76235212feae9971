"""What a pooled book's floor saw against what evaluation then measured, step by step.

For every book not yet removed that had a calibration floor (``generic.others``), at the α the
step took: the floor's reading as a fraction of its reading at α = 0 (the windows ``protect``
and ``kl`` kept, or with ``generic.check`` the windows held back from them), beside the book's
audit-side ROUGE-L after the step as a fraction of memorized (what the table grades). At step 1
both start from the memorized model, so they compare directly; later steps' floors start from
θ_{t−1}. Reads the run records only.

    python experiments/deep/floors_vs_audit.py runs/deep/pretrained/seed0/deep-others \\
        runs/deep/pretrained/seed0/deep-others-check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssu.recipes.evaluate import load_results


def compare(run: Path) -> list[tuple[int, str, float, float]]:
    """(step, book, floor reading at the chosen α / at α 0, audit ROUGE-L / memorized)."""
    results = load_results(run)
    memorized = {r["book"]: r["value"] for r in results if r["step"] == 0 and r["metric"] == "rougeL_f"}
    out = []
    steps = json.loads((run / "manifest.json").read_text())["steps"]
    for step, entry in sorted(steps.items(), key=lambda kv: int(kv[0])):
        checks = (entry.get("calibration") or {}).get("checks") or []
        taken = [c for a, c, _ in checks if abs(a - entry["alpha"]) < 1e-5]
        if not checks or not taken:
            continue
        start, at = checks[0][1], taken[-1]
        audit = {r["book"]: r["value"] / memorized[r["book"]] for r in results
                 if r["step"] == int(step) and r["set"] == "future" and r["metric"] == "rougeL_f"
                 and r["book"] != "*" and memorized.get(r["book"])}
        out += [(int(step), b, at[b] / start[b], audit[b]) for b in sorted(audit) if start.get(b) and b in at]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    for run in ap.parse_args().runs:
        print(run)
        for step, book, floor, audit in compare(run):
            print(f"  step {step}  {book:28s} floor {floor:5.2f}   audit {audit:5.2f}")


if __name__ == "__main__":
    main()
