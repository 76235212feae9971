"""The goal table and the frontier plot of ``run.py``'s runs (one world).

    python experiments/deep/table.py runs/deep/demo [--out experiments/deep/demo.md] [--plot frontier.png]

Per variant and seed, over every step (the issue's goals; "never seen" is the retrain
reference's score on the books removed so far when ``run.py --retrain`` made one, else
the memorized model's score on held-out text):

- removed greedy / worst: the mean over steps of the books removed at the step (audit
  windows), and the largest excess of any removed book at any step (earlier ones
  included) over the never-seen level -- goal <= +0.05, greedy and worst case alike;
- relearned: the largest gap of the relearned book to the retrain reference relearned
  the same way (goal <= +0.10; needs ``--retrain``);
- earlier worst: the largest worst case of a book removed at an earlier step;
- not yet removed: the smallest per-step mean of their ROUGE-L / memorized (goal >= 0.90)
  and the smallest single book's (goal >= 0.80);
- retained: the smallest per-step mean ratio (goal >= 0.95); held-out ppl: the largest
  ratio to the memorized model's (goal <= 1.05); lm-eval: the last step's ssu_cloze
  accuracy minus the memorized model's, in its standard errors (goal within 1).

Cells are means over seeds; a goal counts as met when every seed meets it. A second table reads
utility against the retrain reference of the same step instead of the memorized model (the same
bounds: ppl <= 1.05 x, lm-eval within 1 of the reference's standard error): two memorizations of the
same books differ by more than the issue's bounds, so this says which runs are within them of a
model that never saw the book. A reading beside the goal, not the goal.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

ACC = "lm_eval:ssu_cloze:acc"
GOALS = {"greedy_excess": (0.05, "<="), "worst_excess": (0.05, "<="), "relearn_gap": (0.10, "<="),
         "future_mean": (0.90, ">="), "future_min": (0.80, ">="), "retained": (0.95, ">="),
         "ppl_ratio": (1.05, "<="), "lm_eval_se": (1.0, "<="),
         "ppl_vs_ref": (1.05, "<="), "lm_eval_se_ref": (1.0, "<=")}  # the last two: against the reference


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _get(rows, step, sets, metric, book=None) -> list[float]:
    return [r["value"] for r in rows if r["step"] == step and r["set"] in sets and r["metric"] == metric
            and r["book"] != "*" and (book is None or r["book"] == book)]


def never_seen(seed_dir: Path, rows: list[dict], step: int, metric: str) -> float | None:
    """The retrain reference's mean over the books removed so far, else held-out text at step 0."""
    ref = _rows(seed_dir / "retrain" / f"step_{step}" / "eval" / "results.jsonl")
    vals = _get(ref, step, ("removed-now", "removed-earlier"), metric)
    if vals:
        return float(np.mean(vals))
    vals = _get(rows, 0, ("heldout",), metric)
    return float(np.mean(vals)) if vals else None


REFERENCE = "retrain reference"


def reference_rows(seed_dir: Path) -> list[dict]:
    """The retrain references as one run: step T's rows are the reference of step T; step 0's
    (the memorized model, which the ratios divide by) are those of the first variant run that
    has them."""
    rows = [r for ref in sorted((seed_dir / "retrain").glob("step_*/eval/results.jsonl")) for r in _rows(ref)]
    if not rows:
        return []
    for run in sorted(p for p in seed_dir.iterdir() if (p / "results.jsonl").is_file()):
        memorized = [r for r in _rows(run / "results.jsonl") if r["step"] == 0]
        if memorized:
            return memorized + rows
    return []


def figures(seed_dir: Path, variant: str) -> dict | None:
    """One run's goal figures; ``variant`` ``REFERENCE``: the retrain references' own (no excess
    or gap: they are the level the others are measured against)."""
    reference = variant == REFERENCE
    run = seed_dir / variant
    rows = reference_rows(seed_dir) if reference else _rows(run / "results.jsonl")
    steps = sorted({r["step"] for r in rows} - {0})
    if not steps:
        return None
    memorized = {r["book"]: r["value"] for r in rows if r["step"] == 0 and r["metric"] == "rougeL_f"
                 and r["book"] != "*"}
    ppl0 = np.mean(_get(rows, 0, ("heldout",), "perplexity") or [np.nan])
    out = {"steps": len(steps), "greedy": [], "worst": [], "relearn": [], "greedy_excess": -1.0, "worst_excess": -1.0,
           "relearn_gap": None, "earlier_worst": None, "future_mean": None, "future_min": None, "retained": None,
           "ppl_ratio": None, "lm_eval_se": None, "ppl_vs_ref": None, "lm_eval_se_ref": None}
    for t in steps:
        for metric, key in (("rougeL_f", "greedy"), ("probe:worst", "worst")):
            now = _get(rows, t, ("removed-now",), metric)
            removed = _get(rows, t, ("removed-now", "removed-earlier"), metric)
            level = never_seen(seed_dir, rows, t, metric)
            if now:
                out[key].append(float(np.mean(now)))
            if removed and level is not None and not reference:
                out[f"{key}_excess"] = max(out[f"{key}_excess"], max(removed) - level)
        relearned = _get(rows, t, ("removed-now",), "probe:relearn")
        ref_rows = [] if reference else _rows(seed_dir / "retrain" / f"step_{t}" / "eval" / "results.jsonl")
        ref = _get(ref_rows, t, ("removed-now",), "probe:relearn")
        if relearned:
            out["relearn"].append(float(np.mean(relearned)))
            if ref:  # a reference has no reference rows of its own
                gap = float(np.mean(relearned) - np.mean(ref))
                out["relearn_gap"] = gap if out["relearn_gap"] is None else max(out["relearn_gap"], gap)
        earlier = _get(rows, t, ("removed-earlier",), "probe:worst")
        if earlier:
            out["earlier_worst"] = max(out["earlier_worst"] or 0.0, float(np.mean(earlier)))
        future = [r["value"] / memorized[r["book"]] for r in rows if r["step"] == t and r["set"] == "future"
                  and r["metric"] == "rougeL_f" and r["book"] in memorized and memorized[r["book"]] > 0]
        if future:
            out["future_mean"] = min(out["future_mean"] or 9.0, float(np.mean(future)))
            out["future_min"] = min(out["future_min"] or 9.0, min(future))
        kept = [r["value"] / memorized[r["book"]] for r in rows if r["step"] == t and r["set"] == "retain"
                and r["metric"] == "rougeL_f" and r["book"] in memorized and memorized[r["book"]] > 0]
        if kept:
            out["retained"] = min(out["retained"] or 9.0, float(np.mean(kept)))
        ppl = _get(rows, t, ("heldout",), "perplexity")
        if ppl and np.isfinite(ppl0):
            out["ppl_ratio"] = max(out["ppl_ratio"] or 0.0, float(np.mean(ppl) / ppl0))
        ref_ppl = _get(ref_rows, t, ("heldout",), "perplexity")
        if ppl and ref_ppl:
            out["ppl_vs_ref"] = max(out["ppl_vs_ref"] or 0.0, float(np.mean(ppl) / np.mean(ref_ppl)))
    acc = {r["step"]: r for r in rows if r["metric"] == ACC}
    if 0 in acc and steps[-1] in acc and acc[0].get("stderr"):
        out["lm_eval"] = acc[steps[-1]]["value"]
        out["lm_eval_se"] = abs(acc[steps[-1]]["value"] - acc[0]["value"]) / acc[0]["stderr"]
    last_ref = [] if reference else _rows(seed_dir / "retrain" / f"step_{steps[-1]}" / "eval" / "results.jsonl")
    ref_acc = next((r for r in last_ref if r["metric"] == ACC and r.get("stderr")), None)
    if ref_acc and steps[-1] in acc:
        out["lm_eval_se_ref"] = abs(acc[steps[-1]]["value"] - ref_acc["value"]) / ref_acc["stderr"]
    if reference:
        return {**out, "greedy_excess": None, "worst_excess": None, "alphas": [], "seconds": None}
    manifest = json.loads((run / "manifest.json").read_text())["steps"]
    out["alphas"] = [manifest[str(t)]["alpha"] for t in steps if str(t) in manifest]
    out["seconds"] = sum(manifest[str(t)]["timings"]["total_seconds"] for t in steps if str(t) in manifest)
    return out


def met(key: str, value) -> bool | None:
    if value is None:
        return None
    bound, op = GOALS[key]
    return value <= bound if op == "<=" else value >= bound


def collect(out: Path) -> dict[str, list[dict]]:
    table: dict[str, list[dict]] = {}
    for seed_dir in sorted(out.glob("seed*")):
        for run in sorted(p for p in seed_dir.iterdir() if (p / "manifest.json").is_file()):
            f = figures(seed_dir, run.name)
            if f is not None:
                table.setdefault(run.name, []).append({"seed": seed_dir.name.removeprefix("seed"), **f})
        f = figures(seed_dir, REFERENCE)
        if f is not None:
            table.setdefault(REFERENCE, []).append({"seed": seed_dir.name.removeprefix("seed"), **f})
    return table


COLS = [("greedy", "removed greedy"), ("greedy_excess", "max over never seen"), ("worst", "removed worst"),
        ("worst_excess", "worst: max over never seen"), ("relearn", "relearned"), ("relearn_gap", "relearn gap"),
        ("earlier_worst", "earlier worst"), ("future_mean", "not yet removed (min mean)"),
        ("future_min", "not yet removed (min book)"), ("retained", "retained"), ("ppl_ratio", "held-out ppl ×"),
        ("lm_eval_se", "lm-eval Δ (stderr)")]


def _cell(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if r.get(key) is not None]
    if key in ("greedy", "worst", "relearn"):
        vals = [float(np.mean(v)) for v in vals if v]
    if not vals:
        return "—"
    text = f"{np.mean(vals):+.2f}" if key.endswith(("excess", "gap")) else f"{np.mean(vals):.2f}"
    ok = [met(key, v) for v in vals] if key in GOALS else []
    return text + (" ✓" if ok and all(ok) else " ✗" if ok else "")


UTILITY = [("ppl_ratio", "held-out ppl × memorized"), ("ppl_vs_ref", "× reference"),
           ("lm_eval_se", "lm-eval Δ memorized (stderr)"), ("lm_eval_se_ref", "Δ reference (stderr)")]


def render(table: dict[str, list[dict]], order: list[str], cols: list[tuple[str, str]] = COLS) -> str:
    """The goal table (``COLS``), or with ``UTILITY`` utility read against the memorized model and the reference."""
    lines = ["| variant | seeds | " + " | ".join(h for _, h in cols) + " |", "|---|---|" + "---:|" * len(cols)]
    full = max((r["steps"] for runs in table.values() for r in runs), default=0)
    names = [n for n in order if n in table] + sorted(set(table) - set(order) - {REFERENCE})
    for name in names + [REFERENCE] * (REFERENCE in table):  # the references last
        runs = table[name]  # a run stopped short says so: its cells cover its steps only
        seeds = [r["seed"] + (f" ({r['steps']} of {full} steps)" if r["steps"] < full else "") for r in runs]
        lines.append(f"| {name} | {','.join(seeds)} | "
                     + " | ".join(_cell(runs, k) for k, _ in cols) + " |")
    return "\n".join(lines)


def utility(table: dict[str, list[dict]], order: list[str]) -> str:
    """The runs' utility against the memorized model and against the reference of the same step."""
    return render({k: v for k, v in table.items() if k != REFERENCE}, order, UTILITY)


def frontier(table: dict[str, list[dict]], path: Path) -> None:
    """Removal depth (largest greedy excess over never seen) vs the books not yet removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    colors, markers = plt.get_cmap("tab20").colors, "os^Dv<>P*Xh"
    for i, (name, runs) in enumerate(sorted(table.items())):  # a colour and a marker per variant
        points = [(r["greedy_excess"], r["future_mean"]) for r in runs
                  if None not in (r.get("greedy_excess"), r.get("future_mean"))]  # the references: no excess
        if points:
            ax.scatter(*zip(*points), label=name, s=30, color=colors[i % 20], marker=markers[i % len(markers)])
    ax.axvline(0.05, ls="--", c="grey", lw=1)
    ax.axhline(0.90, ls="--", c="grey", lw=1)
    ax.set_xlabel("removed books: largest greedy ROUGE-L over the never-seen level")
    ax.set_ylabel("not yet removed: smallest per-step mean / memorized")
    ax.set_title("Removal depth vs what else is kept (goal: upper left of the dashes)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the title and the legend whole


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--md", type=click.Path(path_type=Path), help="also write the table here")
@click.option("--plot", type=click.Path(path_type=Path), help="write the frontier plot here")
def main(out: Path, md: Path | None, plot: Path | None) -> None:
    sys_path = Path(__file__).resolve().parent
    import sys

    sys.path.insert(0, str(sys_path))
    from variants import MAIN

    table = collect(out)
    text = render(table, MAIN)
    if any(r.get("ppl_vs_ref") is not None for runs in table.values() for r in runs):
        text += "\n\nUtility against the retrain reference of the same step (a reading beside the goal):\n\n"
        text += utility(table, MAIN)
    click.echo(text)
    for name, runs in table.items():
        if name == REFERENCE:
            continue
        click.echo(f"{name}: alphas " + "; ".join(f"seed {r['seed']}: {[round(a, 2) for a in r['alphas']]}"
                                                  for r in runs))
    if md:
        md.write_text(text + "\n")
    if plot:
        frontier(table, plot)


if __name__ == "__main__":
    main()
