"""What re-weighting a run's stack could reach: every α vector of a grid, judged by the issue's goals.

The stack is kept so that any step can be re-weighted after the fact (``ssu stack --reweight``).
This asks how far that alone could go on a finished run: for every α vector (α_1, ..., α_T) drawn
from ``--grid``, the model after each step s is θ_0 + Σ_{r≤s} α_r·v_r (the run's own vectors,
trained at the α the run took), and after each step it reads what ``table.py`` grades -- the
removed books' greedy ROUGE-L on their audit windows against the retrain reference, relearning
of the book removed at s (the probe's grid of rates, as ``run.py`` runs it) against the
reference's, the books not yet removed and the retain books as fractions of memorized.

It is an **oracle**, not a recipe: it reads the audit windows, which no component of a recipe
may tune on (a recipe's calibration sees the calibration windows alone). So it bounds what
re-weighting could reach on these vectors; an α vector that meets no goal here meets none in
any calibrated re-weighting either. The worst-case probes (shifted, sampled, quantized) and
held-out perplexity are left out for time; ``run.py``'s evaluation has them for the α the run took.

    python experiments/deep/reweight_oracle.py runs/deep/demo-base/seed0/onpolicy-teacher-hinge4-over-lr3e-4 \\
        --grid 0.6 0.8 1.0 --out runs/deep/oracle/base-s0-lr3e-4.jsonl
    python experiments/deep/reweight_oracle.py --plot experiments/deep/reweight-oracle.png runs/deep/oracle/*.jsonl

Prefixes are shared: the state after step s is evaluated once for every α vector that begins
with its α_1..α_s. Rows are appended as they are measured (JSON lines), so a killed sweep
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from table import _get, _rows, met, never_seen

RELEARN = {"steps": 6, "lrs": [3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3], "batch_size": 2}  # run.py's RELEARN


def reference(seed_dir: Path, step: int) -> dict[str, float]:
    """The retrain reference after ``step``: greedy on every removed book's audit windows (``table.never_seen``),
    relearning of the book removed now."""
    ref = _rows(seed_dir / "retrain" / f"step_{step}" / "eval" / "results.jsonl")
    return {"greedy": never_seen(seed_dir, [], step, "rougeL_f"),
            "relearn": float(np.mean(_get(ref, step, ("removed-now",), "probe:relearn")))}


def measure(run, step: int, alphas: dict[int, float], tokenizer, base: dict | None) -> dict:
    """Greedy ROUGE-L per (set, book) on the audit windows after ``step`` at ``alphas``, and relearning."""
    from ssu.eval.memorization import rouge_l_scores
    from ssu.eval.probes import ProbeContext
    from ssu.eval.probes.relearn import Relearn
    from ssu.eval.sets import set_goals
    from ssu.recipes.compose import load_composed
    from ssu.recipes.eval_windows import evaluation_windows

    cfg = run.config
    windows = [w for w in evaluation_windows(run, step) if w.get("audit", True)]

    def load():
        return load_composed(run, upto=step, alphas=alphas)

    model = load()  # scored first, then the relearning probe's first rate fine-tunes it in place
    scores: dict[tuple[str, str], list[float]] = {}
    for w, v in zip(windows, rouge_l_scores(model, tokenizer, windows, cfg.train.max_length)):
        scores.setdefault((w["set"], w["book"]), []).append(v)
    by = {k: float(np.mean(v)) for k, v in scores.items()}
    out = {"by_book": {f"{s}:{b}": round(v, 6) for (s, b), v in by.items()}}
    if base is None:
        return out
    goals = set_goals(cfg)
    # the probe's own windows: the attacker learns a slice of every removed book at once, as run.py's evaluation does
    probed = [{**w, "goal": goals.get(w["set"])} for w in windows if w["set"] in cfg.eval.probe_sets]
    ctx = ProbeContext(cfg, step, probed, cfg.seed + step, False, load=load)
    relearned = Relearn(Relearn.Args(**RELEARN)).scores(model, tokenizer, ctx)
    ratio = {s: [v / base[f"{s}:{b}"] for (s_, b), v in by.items() if s_ == s and base.get(f"{s}:{b}")]
             for s in ("future", "retain")}
    now = [r.value for r in relearned if r.set == "removed-now"]
    out.update({"now": float(np.mean([v for (s, _), v in by.items() if s == "removed-now"])),
                "removed_max": max(v for (s, _), v in by.items() if s in ("removed-now", "removed-earlier")),
                "relearn": float(np.mean(now)) if now else None,
                "future_mean": float(np.mean(ratio["future"])) if ratio["future"] else None,
                "future_min": min(ratio["future"]) if ratio["future"] else None,
                "retained": float(np.mean(ratio["retain"])) if ratio["retain"] else None})
    return out


def judged(row: dict, ref: dict) -> dict[str, bool | None]:
    """The goals this oracle reads, each met or not (None: not measured at this step)."""
    gap = None if row["relearn"] is None else row["relearn"] - ref["relearn"]
    return {"greedy_excess": met("greedy_excess", row["removed_max"] - ref["greedy"]),
            "relearn_gap": met("relearn_gap", gap), "future_mean": met("future_mean", row["future_mean"]),
            "future_min": met("future_min", row["future_min"]), "retained": met("retained", row["retained"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", type=Path, nargs="+", help="the run (or, with --plot, the sweeps' JSON lines)")
    ap.add_argument("--grid", type=float, nargs="+", help="the α each step may take")
    ap.add_argument("--out", type=Path, help="JSON lines, one per (step, α prefix)")
    ap.add_argument("--plot", type=Path, help="plot the sweeps given as paths (relearning gap against the books "
                                              "not yet removed, every state) to this PNG")
    args = ap.parse_args()
    if args.plot:
        plot(args.paths, args.plot)
    elif len(args.paths) != 1 or not args.grid or not args.out:
        ap.error("a sweep takes one run, --grid and --out")
    else:
        from ssu.errors import SSUError

        try:
            sweep(args.paths[0], args.grid, args.out)
        except SSUError as e:
            raise SystemExit(f"error: {e}") from None


def sweep(run_dir: Path, grid: list[float], out: Path) -> None:
    from ssu.errors import SSUError
    from ssu.models.loading import load_tokenizer
    from ssu.recipes.run_dir import RunDir

    run = RunDir(run_dir)
    steps = sorted(int(s) for s in run.manifest["steps"])
    missing = [t for t in steps if not (run_dir.parent / "retrain" / f"step_{t}" / "eval" / "results.jsonl").is_file()]
    if missing:
        raise SSUError(f"{run_dir.parent} has no retrain reference for steps {missing} (run.py --retrain)")
    tokenizer = load_tokenizer(run.config.model, run.config.trust_remote_code)
    done = {}
    if out.is_file():
        done = {tuple(r["alphas"]): r for r in map(json.loads, out.read_text().splitlines()) if r}
    out.parent.mkdir(parents=True, exist_ok=True)
    base = done.get(()) or {"alphas": [], **measure(run, 0, {}, tokenizer, None)}
    if () not in done:
        with out.open("a") as f:
            f.write(json.dumps(base) + "\n")
    for t in steps:
        ref = reference(run_dir.parent, t)
        for prefix in itertools.product(grid, repeat=t):
            if prefix in done:
                continue
            row = {"alphas": list(prefix), "step": t, "reference": ref,
                   **measure(run, t, dict(zip(steps, prefix)), tokenizer, base["by_book"])}
            row["goals"] = judged(row, ref)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            marks = " ".join(f"{k}{'✓' if v else '✗'}" for k, v in row["goals"].items() if v is not None)
            print(f"step {t} α {prefix}: removed {row['removed_max']:.3f} (ref {ref['greedy']:.3f}) relearn "
                  f"{row['relearn']:.3f} (ref {ref['relearn']:.3f}) others {row['future_mean'] or 0:.2f}/"
                  f"{row['future_min'] or 0:.2f} retained {row['retained']:.2f}  {marks}", flush=True)
    summary(out, len(steps))


def plot(paths: list[Path], png: Path) -> None:
    """One panel per sweep: every state's relearning gap against its worst book not yet removed, by step; the
    goal's corner shaded, the run's own α (1 at every step) ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 3.8), squeeze=False, sharey=True)
    for ax, path in zip(axes[0], paths):
        rows = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("goals")]
        for t in sorted({r["step"] for r in rows}):
            pts = [(r["future_min"], r["relearn"] - r["reference"]["relearn"], all(a == 1.0 for a in r["alphas"]))
                   for r in rows if r["step"] == t and r["future_min"] is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=f"after step {t}")
            ax.scatter([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], s=80, facecolors="none",
                       edgecolors="black")
        ax.fill_between([0.8, 1.1], -0.1, 0.10, alpha=0.08, color="green")  # the goal: both
        ax.axhline(0.10, color="grey", lw=0.8, ls="--")
        ax.axvline(0.80, color="grey", lw=0.8, ls="--")
        ax.set_xlim(0.3, 1.1)
        ax.set_ylim(-0.1, 0.5)
        ax.set_title(path.stem, fontsize=9)
        ax.set_xlabel("worst book not yet removed / memorized")
    axes[0][0].set_ylabel("relearned − retrain reference")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def summary(path: Path, n_steps: int) -> None:
    """Print the α vectors whose every prefix meets every goal read, else the ones that miss the fewest."""
    rows = {tuple(r["alphas"]): r for r in map(json.loads, path.read_text().splitlines()) if r.get("goals")}
    misses = {}
    for full in (a for a in rows if len(a) == n_steps):
        failed = [f"{k}@{t}" for t in range(1, n_steps + 1) for k, v in rows[full[:t]]["goals"].items() if v is False]
        misses[full] = failed
    fewest = min(len(f) for f in misses.values())
    print(f"{sum(not f for f in misses.values())} of {len(misses)} α vectors meet every goal read after every step; "
          f"fewest misses {fewest}:")
    for full, failed in sorted(misses.items()):
        if len(failed) == fewest:
            print(f"  α {full}: {', '.join(failed) or 'none'}")


if __name__ == "__main__":
    main()
