"""Which windows an evaluation of a run scores, and the model it scores them on.

Shared by the evaluate and probe recipes: the prepared windows and the schedule are
read here, the audit windows of every removed book come from the manifest (the steps
that tuned α kept them apart, ``ssu/recipes/calibrate.py``), and ``ssu.eval.sets``
makes the selection.
"""

from __future__ import annotations

from ssu.errors import SSUError
from ssu.eval.sets import SetContext, select_windows
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir

GENERATIONS = "generations.jsonl"  # step_T/: greedy continuation of every evaluated window


def window_key(w: dict) -> tuple:
    return (w["set"], w["book"], w["window"])


def audit_windows(run: RunDir) -> dict[str, set[int]]:
    """book -> its audit windows, for every book a completed step split."""
    out: dict[str, set[int]] = {}
    for entry in run.manifest["steps"].values():
        for book, split in (entry.get("split") or {}).items():
            out[book] = set(split["audit"])
    return out


def evaluation_windows(run: RunDir, step: int) -> list[dict]:
    """Windows to score after ``step``, each tagged with its set (and, in removed sets, ``audit``)."""
    from data_prep import load_schedule, read_window_rows
    from ssu.recipes.pool import other_audit

    cfg = run.config
    schedule = load_schedule(cfg.data)
    audit = {**other_audit(cfg, step), **audit_windows(run)}  # books not yet removed: pooled ones' audit side
    ctx = SetContext(step, read_window_rows(cfg.data),
                     {b: s for s, books in schedule["steps"].items() for b in books}, cfg, audit)
    return select_windows(cfg, ctx)


def load_model_for(run: RunDir, step: int, base_only: bool = False):
    """The model after ``step`` (``base_only``: the run's base itself, e.g. a retrain reference)."""
    if base_only:
        return load_composed(run, upto=0)
    if step != 0 and step not in run.completed_steps():
        raise SSUError(f"step {step} is not complete in {run.path}; run `ssu step {run.path} {step}` first")
    return load_composed(run, upto=step)
