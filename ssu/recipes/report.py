"""``ssu report``: the book x step matrix, utility per step, and plots.

Reads only ``RUN_DIR/results.jsonl`` (written by ``ssu eval``), so a report can be
redrawn at any time without a model. Books are listed in removal order, then
retain books, then held-out text and user sets; each cell is the metric after that
step. Which sets count as removed or retained, how a set is labelled and whether a
metric is better high or low come from the registries (``ssu.eval.sets``,
``ssu.eval.model_metrics``, ``ssu.metrics``), never from names written here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssu.errors import SSUError
from ssu.eval.model_metrics import higher_is_better, is_model_metric
from ssu.eval.probes import WORST
from ssu.eval.sets import ALL_WINDOWS, SETS, set_goals
from ssu.io import write_figure as save_figure
from ssu.recipes.evaluate import load_results
from ssu.recipes.run_dir import RunDir


def _schedule_step(run_dir: Path) -> dict[str, int]:
    from data_prep import load_schedule

    steps = load_schedule(RunDir(run_dir).config.data)["steps"]
    return {b: s for s, books in steps.items() for b in books}


def _goals(run_dir: Path | None) -> dict[str, str | None]:
    return set_goals(RunDir(run_dir).config if run_dir is not None else None)


def _arrow(metric: str, row: dict | None = None) -> str:
    hib = higher_is_better(metric, row)
    return "" if hib is None else " ↑" if hib else " ↓"


def book_matrix(rows: list[dict], metric: str) -> tuple[list[int], list[str], dict[tuple[str, int], float]]:
    """(steps, books, {(book, step): value}) for one metric."""
    cells = {(r["book"], r["step"]): r["value"] for r in rows
             if r["metric"] == metric and r["book"] != "*" and not r["set"].endswith(ALL_WINDOWS)}
    if not cells:
        known = sorted({r["metric"] for r in rows})
        raise SSUError(f"no results for metric {metric!r}; available: {', '.join(known) or 'none'}")
    steps = sorted({s for _, s in cells})
    books = sorted({b for b, _ in cells})
    return steps, books, cells


def _order_books(books: list[str], step_of: dict[str, int], sets: dict[str, str]) -> list[str]:
    def key(b: str):
        if b in step_of:
            return (0, step_of[b], b)
        return (1 if sets.get(b) == "retain" else 2, 0, b)

    return sorted(books, key=key)


def format_matrix(run_dir: str | Path, metric: str = "rougeL_f") -> str:
    """The book x step matrix as aligned text, with utility rows underneath."""
    run_dir = Path(run_dir)
    rows = load_results(run_dir)
    if not rows:
        raise SSUError(f"{run_dir} has no results yet; run `ssu eval {run_dir} T` (or `ssu step` without --no-eval)")
    steps, books, cells = book_matrix(rows, metric)
    step_of = _schedule_step(run_dir)
    sets = {r["book"]: r["set"] for r in rows}
    books = _order_books(books, step_of, sets)
    width = max([len(b) + 12 for b in books] + [len("perplexity (not yet removed) ↓") + 1])
    lines = [f"{metric} (rows: books; columns: after step; * = removed at or before that step)",
             f"{'book':<{width}}" + "".join(f"{'step ' + str(s):>10}" for s in steps)]
    for b in books:
        label = f"{b} (step {step_of[b]})" if b in step_of else f"{b} ({sets.get(b, '?')})"
        cellstr = ""
        for s in steps:
            v = cells.get((b, s))
            mark = "*" if b in step_of and step_of[b] <= s else " "
            cellstr += f"{'-':>10}" if v is None else f"{v:>9.3f}{mark}"
        lines.append(f"{label:<{width}}{cellstr}")
    lines += [""] + probe_lines(rows, step_of, width, steps)
    lines.append(f"{'utility, privacy (↑/↓: higher/lower is better)':<{width}}"
                 + "".join(f"{'step ' + str(s):>14}" for s in steps))
    errors = utility_stderr(rows)
    for name, values in utility_by_step(rows, _goals(run_dir)).items():
        err = errors.get(name, {})
        lines.append(f"{name:<{width}}" + "".join(
            f"{'-':>14}" if s not in values else f"{values[s]:>8.3f}±{err[s]:<5.3f}" if s in err
            else f"{values[s]:>14.4g}" for s in steps))
    return "\n".join(lines)


def probe_cells(rows: list[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """{(book, step): {"greedy", "worst", "relearn"}} for every book a probe ran on (removed and held-out)."""
    probed = {(r["book"], r["step"], r["set"]) for r in rows if r["metric"] == WORST}
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        key = (r["book"], r["step"], r["set"])
        if key in probed:
            name = {"rougeL_f": "greedy", WORST: "worst", "probe:relearn": "relearn"}.get(r["metric"])
            if name:
                out.setdefault((r["book"], r["step"]), {})[name] = r["value"]
    return out


def probe_lines(rows: list[dict], step_of: dict[str, int], width: int, steps: list[int]) -> list[str]:
    """Greedy beside worst case (and relearned) per probed book and step; nothing if no probe ran."""
    cells = probe_cells(rows)
    if not cells:
        return []
    covers = sorted({m.removeprefix("probe:") for r in rows if r["metric"] == WORST for m in r.get("covers", [])})
    relearn = any("relearn" in c for c in cells.values())
    fmt = "greedy/worst" + ("/relearn" if relearn else "")
    lines = [f"rougeL_f {fmt} (worst: per window the max over {', '.join(covers)})",
             f"{'book':<{width}}" + "".join(f"{'step ' + str(s):>16}" for s in steps)]
    for b in _order_books(sorted({b for b, _ in cells}), step_of, {}):
        label = f"{b} (step {step_of[b]})" if b in step_of else f"{b} (never seen)"
        vals = []
        for s in steps:
            c = cells.get((b, s))
            if c is None:
                vals.append(f"{'-':>16}")
                continue
            parts = [c.get("greedy"), c.get("worst")] + ([c.get("relearn")] if relearn else [])
            vals.append(f"{'/'.join('-' if v is None else f'{v:.2f}' for v in parts):>16}")
        lines.append(f"{label:<{width}}" + "".join(vals))
    return lines + [""]


def utility_by_step(rows: list[dict], goals: dict[str, str | None] | None = None) -> dict[str, dict[int, float]]:
    """Model-level metrics per step: per-book ones (perplexity) as the mean over the books of
    each kept or unseen set, whole-model ones (MIA AUCs, lm-eval tasks) as they are."""
    goals = goals if goals is not None else set_goals()
    out: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if not is_model_metric(r["metric"]):
            continue
        if r["book"] == "*":
            label = r["metric"] + _arrow(r["metric"], r)
        elif goals.get(r["set"]) in ("keep", "unseen"):
            # "future" = books not removed yet: the only utility signal when a layout has
            # no retain or held-out books (as the public Gutenberg protocol).
            set_label = SETS.get(r["set"]).label if r["set"] in SETS else r["set"]
            label = f"{r['metric']} ({set_label}){_arrow(r['metric'], r)}"
        else:
            continue
        out.setdefault(label, {}).setdefault(r["step"], []).append(r["value"])
    return {k: {s: float(np.mean(v)) for s, v in d.items()} for k, d in out.items()}


def utility_stderr(rows: list[dict]) -> dict[str, dict[int, float]]:
    """Standard errors of whole-model rows that carry one (lm-eval), keyed as utility_by_step."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["book"] == "*" and r.get("stderr") is not None:
            out.setdefault(r["metric"] + _arrow(r["metric"], r), {})[r["step"]] = r["stderr"]
    return out


def group_means(rows: list[dict], metric: str,
                goals: dict[str, str | None] | None = None) -> dict[int, dict[str, float]]:
    """Per step: mean metric over the books of forget-goal sets ("removed") and of keep-goal sets ("retained")."""
    goals = goals if goals is not None else set_goals()
    acc: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        if r["metric"] != metric or r["book"] == "*" or r["set"].endswith(ALL_WINDOWS):
            continue
        goal = goals.get(r["set"])
        group = "removed" if goal == "forget" else "retained" if goal == "keep" else None
        if group:
            acc.setdefault(r["step"], {}).setdefault(group, []).append(r["value"])
    return {s: {g: float(np.mean(v)) for g, v in d.items()} for s, d in sorted(acc.items())}


def write_plots(run_dir: str | Path, metric: str = "rougeL_f") -> list[Path]:
    """Memorization per book over steps, utility over steps, forget-vs-retain trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = load_results(run_dir)
    steps, books, cells = book_matrix(rows, metric)
    step_of = _schedule_step(run_dir)
    sets = {r["book"]: r["set"] for r in rows}
    out_dir = run_dir / "plots"
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, b in enumerate(_order_books(books, step_of, sets)):
        xs = [s for s in steps if (b, s) in cells]
        ys = [cells[(b, s)] for s in xs]
        if b in step_of:
            ax.plot(xs, ys, "-o", color=cmap(i % 10), label=f"{b} (removed at {step_of[b]})")
            if step_of[b] in xs:
                ax.axvline(step_of[b], color=cmap(i % 10), alpha=0.15)
        else:
            ax.plot(xs, ys, "--", color="grey" if sets.get(b) == "retain" else "black",
                    alpha=0.8, label=f"{b} ({sets.get(b)})")
    ax.set(xlabel="after step", ylabel=metric, title="Memorization per book", ylim=(-0.02, 1.05))
    ax.set_xticks(steps)
    ax.legend(fontsize=7, loc="best")
    paths.append(save_figure(fig, out_dir / f"memorization_{metric}.png"))

    util = utility_by_step(rows, _goals(run_dir))
    if util:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for name, vals in util.items():
            if name.startswith("perplexity ("):
                ax.plot(sorted(vals), [vals[s] for s in sorted(vals)], "-o", label=name)
        ax.set(xlabel="after step", ylabel="perplexity", title="Utility", yscale="log")
        ax.set_xticks(steps)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir / "utility.png"))

    groups = group_means(rows, metric, _goals(run_dir))
    pts = [(s, g["removed"], g["retained"]) for s, g in groups.items() if "removed" in g and "retained" in g]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-o")
        for s, x, y in pts:
            ax.annotate(f"step {s}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set(xlabel=f"{metric} on removed books (lower = forgotten)",
               ylabel=f"{metric} on retained books (higher = kept)", title="Forget vs retain",
               xlim=(-0.02, 1.05), ylim=(-0.02, 1.05))
        paths.append(save_figure(fig, out_dir / "tradeoff.png"))
    return paths
