"""``ssu retrain``: the gold-standard reference -- a model that never saw the removed books.

Unlearning after step T should ideally end where a model would be had it never
been trained on the books removed at steps <= T. ``retrain`` builds that model by
repeating the memorization recipe exactly (the ``MemorizeConfig`` recorded in the
memorized model's ``memorize.json``, from the pre-memorization ``source_model``
recorded there) on every forget and retain window except those books, then
evaluates it on step T's evaluation sets like any unlearned model.

Layout::

    OUT_DIR/model/   the retrained Hugging Face model (with its own memorize.json)
    OUT_DIR/eval/    a run directory with no steps whose base is that model;
                     results.jsonl holds its rows at step T

Both parts are skipped when already complete, so the command is safe to re-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssu.config import load
from ssu.errors import SSUError
from ssu.recipes.evaluate import evaluate_step, load_results
from ssu.recipes.init import init_run
from ssu.recipes.memorize import MemorizeConfig, load_record, memorize
from ssu.recipes.run_dir import CONFIG, RunDir

MODEL, EVAL = "model", "eval"


def removed_books(prepared_dir: str | Path, step: int) -> list[str]:
    """Books the schedule removes at steps 1..``step``."""
    from data_prep import load_schedule

    steps = load_schedule(prepared_dir)["steps"]
    if step not in steps:
        raise SSUError(f"the schedule has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    return sorted(b for s, books in steps.items() if s <= step for b in books)


def recipe(memorized_model: str | Path) -> tuple[str, MemorizeConfig]:
    """The source model and the memorization config that produced ``memorized_model``."""
    record = load_record(memorized_model)
    if not record:
        raise SSUError(f"{memorized_model} has no memorize.json; retrain needs a model made by `ssu memorize`")
    source = record["source_model"]
    if not Path(source).exists() and Path(source).is_absolute():
        raise SSUError(f"the pre-memorization model {source} recorded in {memorized_model} is gone")
    known = MemorizeConfig.__dataclass_fields__
    return source, load(MemorizeConfig, {k: v for k, v in record["config"].items() if k in known},
                        where=f"{memorized_model}/memorize.json")


def retrain(memorized_model: str | Path, prepared_dir: str | Path, out_dir: str | Path, step: int,
            run_overrides: dict[str, Any] | None = None, progress: bool = True,
            sets: list[tuple[str, Any]] | tuple = ()) -> dict:
    """Retrain without the books of steps <= ``step`` and evaluate; return a summary.

    ``run_overrides`` and ``sets`` (seed, eval settings, ...) configure the evaluation run so
    that its windows and metrics match the unlearning runs it is compared with.
    """
    out_dir = Path(out_dir)
    excluded = removed_books(prepared_dir, step)
    model_dir = out_dir / MODEL
    record = load_record(model_dir)
    if record and record.get("excluded_books") != excluded:
        raise SSUError(f"{model_dir} was retrained without {record.get('excluded_books')}, not {excluded}; "
                       "delete it or choose another OUT_DIR")
    if not record:  # memorize() writes the directory atomically: absent or complete
        source, cfg = recipe(memorized_model)
        record = memorize(source, prepared_dir, model_dir, cfg, progress=progress, exclude_books=excluded)

    eval_dir = out_dir / EVAL
    if not (eval_dir / CONFIG).is_file():
        overrides = {**(run_overrides or {}), "model": str(model_dir.resolve()),
                     "data": str(Path(prepared_dir).resolve()), "method": "tv"}
        init_run(eval_dir, overrides, sets=sets)
    elif Path(RunDir(eval_dir).config.model) != model_dir.resolve():
        raise SSUError(f"{eval_dir} evaluates another model; delete it or choose another OUT_DIR")
    evaluate_step(eval_dir, step, progress=progress, base_only=True)
    return {
        "step": step,
        "excluded_books": excluded,
        "seconds": record["seconds"],
        "epochs_run": record["epochs_run"],
        "target_reached": record["target_reached"],
        "results": [r for r in load_results(eval_dir) if r["step"] == step],
    }
