"""Greedy vs each probe vs the worst case on the removed books, per method and step, from an
``ssu compare`` output directory (its runs' results.jsonl and the retrain references').

    python experiments/evidence/table.py runs/evidence/demo-compare [--out table.md]

Per (method, step): the mean over the books removed at that step (``removed-now``, on their
audit windows) of greedy ROUGE-L and of each probe output, the worst case (per window the max
over greedy and the probes), relearned ROUGE-L and its gap to the retrain reference; then the
worst case over every book removed so far (``removed-earlier`` included) and the never-seen
level (held-out text, greedy / worst case). "shallow" marks a removal whose worst case or
relearned score sits more than 0.15 over its greedy score.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

COLS = [("rougeL_f", "greedy"), ("probe:shifted", "shifted"), ("probe:sampled", "sampled (best of k)"),
        ("probe:sampled-extracted", "any-of-k extracted"), ("probe:int8", "int8"), ("probe:int4", "int4"),
        ("probe:rounded", "bf16"), ("probe:worst", "worst case"), ("probe:relearn", "relearned")]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _mean(rows: list[dict], step: int, sets: tuple[str, ...], metric: str) -> float | None:
    vals = [r["value"] for r in rows if r["step"] == step and r["set"] in sets and r["metric"] == metric]
    return float(np.mean(vals)) if vals else None


def collect(out: Path) -> list[dict]:
    """Every run under ``out`` (the comparison's methods, in its order once it has written
    comparison.json) and the retrain references, at every step they were probed."""
    summary = out / "comparison.json"
    methods = json.loads(summary.read_text())["methods"] if summary.is_file() else \
        sorted(p.name for p in out.iterdir() if (p / "manifest.json").is_file())
    probed = {r["step"] for m in methods for r in _rows(out / m / "results.jsonl") if r["metric"] == "probe:worst"}
    table = []
    for method in methods + ["retrain"]:
        for t in sorted(probed - {0}):
            path = out / "retrain" / f"step_{t}" / "eval" / "results.jsonl" if method == "retrain" else \
                out / method / "results.jsonl"
            rows = _rows(path)
            if not any(r["step"] == t for r in rows):
                continue
            row = {"method": method, "step": t}
            for metric, _ in COLS:
                row[metric] = _mean(rows, t, ("removed-now",), metric)
            row["all_removed_worst"] = _mean(rows, t, ("removed-now", "removed-earlier"), "probe:worst")
            row["heldout"] = _mean(rows, t, ("heldout",), "rougeL_f")
            row["heldout_worst"] = _mean(rows, t, ("heldout",), "probe:worst")
            table.append(row)
    refs = {r["step"]: r for r in table if r["method"] == "retrain"}
    for r in table:
        ref = refs.get(r["step"], {}).get("probe:relearn")
        r["relearn_gap"] = None if ref is None or r["probe:relearn"] is None else r["probe:relearn"] - ref
        g, w, rl = r["rougeL_f"], r["probe:worst"], r["probe:relearn"]
        r["shallow"] = g is not None and ((w is not None and w - g > 0.15) or (rl is not None and rl - g > 0.15))
    return table


def to_markdown(table: list[dict]) -> str:
    heads = [h for _, h in COLS] + ["relearning gap", "all removed: worst", "never seen: greedy / worst", ""]
    lines = ["| method | step | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    def f(v, fmt="{:.2f}"):
        return "–" if v is None else fmt.format(v)

    for r in table:
        cells = [f(r[m]) for m, _ in COLS] + [f(r["relearn_gap"], "{:+.2f}"), f(r["all_removed_worst"]),
                                              f"{f(r['heldout'])} / {f(r['heldout_worst'])}",
                                              "shallow" if r["shallow"] and r["method"] != "retrain" else ""]
        lines.append(f"| {r['method']} | {r['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(out: Path, out_file: Path | None) -> None:
    text = to_markdown(collect(out))
    click.echo(text)
    if out_file:
        out_file.write_text(text + "\n")


if __name__ == "__main__":
    main()
