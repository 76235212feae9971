"""The two figures of ``ssu compare``: forget-vs-retain trade-off, and forget ROUGE-L over steps.

Drawn from the summary rows only (see ssu.compare.runner.collect), with the Agg backend so
they render without a display; each PNG is rendered in memory and written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssu.io import write_figure as _save

RETRAIN = "retrain"


def _series(rows: list[dict], method: str, key: str) -> tuple[list[int], list[float]]:
    pts = sorted((r["step"], r[key]) for r in rows if r["method"] == method and r[key] is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def write_compare_plots(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``tradeoff.png`` and ``forget_curve.png`` into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, rows = Path(out_dir), summary["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab10")
    style = {m: ({"color": "black", "marker": "s", "linestyle": ":"} if m == RETRAIN
                 else {"color": cmap(i % 10), "marker": "o", "linestyle": "-"}) for i, m in enumerate(methods)}
    paths = []

    # Trade-off: lower-right is bad (kept the book, lost the rest); upper-left is the goal.
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    for m in methods:
        pts = sorted((r["step"], r["forget"], r["retained"]) for r in rows
                     if r["method"] == m and r["forget"] is not None and r["retained"] is not None)
        if not pts:
            continue
        ax.plot([p[1] for p in pts], [p[2] for p in pts], label=m, **style[m])
        for s, x, y in pts:
            ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="ROUGE-L on the book removed now (lower = forgotten)",
           ylabel="ROUGE-L on retained books (higher = kept)", title="Forget vs retain (labels: step)",
           xlim=(-0.02, 1.05), ylim=(-0.02, 1.05))
    ax.legend(fontsize=8, loc="lower right")
    paths.append(_save(fig, out_dir / "tradeoff.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        xs, ys = _series(rows, m, "forget")
        if xs:
            ax.plot(xs, ys, label=m, **style[m])
        xs, ys = _series(rows, m, "earlier")
        if xs:  # books removed at earlier steps must stay forgotten
            ax.plot(xs, ys, color=style[m]["color"], linestyle="--", marker="x", alpha=0.6)
    memorized = summary.get("base", {}).get("memorized")
    if memorized is not None:
        ax.axhline(memorized, color="grey", linewidth=0.8, label="memorized (step 0)")
    steps = sorted({r["step"] for r in rows})
    ax.set(xlabel="after step", ylabel="ROUGE-L", ylim=(-0.02, 1.05),
           title="Forget ROUGE-L (solid: removed now, dashed x: removed earlier)")
    ax.set_xticks(steps)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "forget_curve.png"))
    return paths
