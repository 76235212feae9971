"""``ssu eval``: memorization, utility and privacy after a time step.

After step T the model is scored on the run's *evaluation sets* (``ssu.eval.sets``:
by default ``removed-now``, ``removed-earlier``, ``retain``, ``future`` = not yet
removed, ``heldout``; plus any user sets from ``eval.extra_sets``), each book
separately. Greedy continuations of each window's prompt -- the prompt alone, never
the reference -- are saved to ``step_T/generations.jsonl``; every text metric
(``ssu.metrics``) is computed from that file, so metrics can be added or recomputed
without regenerating, and a set added later generates only its own windows. Then the
*model-level metrics* (``ssu.eval.model_metrics``: perplexity, membership inference,
lm-eval tasks) run on the model itself. One row per (step, book, set, metric) goes to
``results.jsonl``, with its n and a 95 % confidence interval; rows already there are
not recomputed. Step 0 is the base (memorized) model.

A removed book whose step tuned α on some of its windows is graded on the others,
its *audit* windows (set ``removed-now``), and reported on all of them as well
(``removed-now:all``). The run's probes (``eval.probes``) run last
(``ssu/recipes/probe.py``).
"""

from __future__ import annotations

from pathlib import Path

from ssu.config import ComponentSpec, RunConfig
from ssu.eval.generation import generate_continuations
from ssu.eval.model_metrics import ModelContext
from ssu.eval.sets import ALL_WINDOWS, set_goals
from ssu.io import atomic_write_jsonl, read_jsonl
from ssu.metrics import aggregate, get_metric
from ssu.recipes.components import build_model_metrics
from ssu.recipes.eval_windows import GENERATIONS, evaluation_windows, load_model_for, window_key
from ssu.recipes.probe import probe_specs, probe_step
from ssu.recipes.run_dir import RESULTS, RunDir


def _key(r: dict) -> tuple:
    return (r["step"], r["book"], r["set"], r["metric"])


def model_metric_specs(cfg: RunConfig, lm_eval_tasks: list[str] | None = None,
                       lm_eval_include: str | None = None) -> list[ComponentSpec]:
    """The run's model metrics; ``ssu eval --lm-eval`` adds its tasks to lm_eval's (or adds lm_eval)."""
    specs = [ComponentSpec(m.name, dict(m.args)) for m in cfg.eval.model_metrics]
    if not lm_eval_tasks:
        return specs
    for s in specs:
        if s.name == "lm_eval":
            s.args["tasks"] = list(dict.fromkeys(list(s.args.get("tasks") or []) + lm_eval_tasks))
            s.args["include"] = lm_eval_include or s.args.get("include")
            return specs
    return specs + [ComponentSpec("lm_eval", {"tasks": lm_eval_tasks, "include": lm_eval_include})]


def evaluate_step(run_dir: str | Path, step: int, progress: bool = True,
                  metrics: list[str] | None = None, base_only: bool = False,
                  lm_eval_tasks: list[str] | None = None, lm_eval_include: str | None = None,
                  probes: list[str] | None = None) -> list[dict]:
    """Evaluate the model after ``step``; return the new results rows.

    ``metrics``: text metrics instead of ``eval.metrics``. ``lm_eval_tasks`` /
    ``lm_eval_include``: lm-eval tasks to run now besides the config's. ``probes``:
    probes to run now besides ``eval.probes`` (``ssu/recipes/probe.py``), after the metrics.
    ``base_only``: score the run's base model itself as the state after ``step``, with
    no stack applied -- for a reference such as a model retrained without those books.
    """
    specs = probe_specs(RunDir(run_dir).config, probes)  # an unknown probe fails before any work
    new = _evaluate_metrics(run_dir, step, progress, metrics, base_only, lm_eval_tasks, lm_eval_include)
    if specs:
        new += probe_step(run_dir, step, specs, progress=progress, base_only=base_only)
    return new


def _evaluate_metrics(run_dir, step, progress, metrics, base_only, lm_eval_tasks, lm_eval_include) -> list[dict]:
    from ssu.models.loading import load_tokenizer

    run = RunDir(run_dir)
    cfg = run.config
    names = metrics or cfg.eval.metrics
    metric_objs = {n: get_metric(n) for n in names}  # fails early on an unknown name
    model_metrics = build_model_metrics(model_metric_specs(cfg, lm_eval_tasks, lm_eval_include))
    step_dir = run.step_dir(step)
    gen_path = step_dir / GENERATIONS
    results_path = run.path / RESULTS
    results = read_jsonl(results_path)
    have = {_key(r) for r in results}
    windows = evaluation_windows(run, step)
    books = sorted({(w["book"], w["set"]) for w in windows})
    todo_text = [n for n in names if any((step, b, s, n) not in have for b, s in books)]

    def load():
        return load_model_for(run, step, base_only), load_tokenizer(cfg.model, cfg.trust_remote_code)

    ctx = ModelContext(config=cfg, step=step, windows=windows, have=have, goals=set_goals(cfg), load=load)
    todo_model = [m for m in model_metrics if m.missing(ctx)]
    if not todo_text and not todo_model:
        return []

    generations = read_jsonl(gen_path)
    done = {window_key(g) for g in generations}
    pending = [w for w in windows if window_key(w) not in done]
    if todo_text and pending:
        model, tokenizer = ctx.model, ctx.tokenizer
        outputs = generate_continuations(model, tokenizer, pending, batch_size=cfg.eval.batch_size,
                                         max_length=cfg.train.max_length, progress=progress,
                                         tokens_per_batch=cfg.eval.tokens_per_batch)
        generations = generations + [
            {"book": w["book"], "set": w["set"], "window": w["window"], "prompt": w["prompt"],
             "reference": w["continuation"], "output": o} for w, o in zip(pending, outputs)]
        step_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(gen_path, generations)

    new: list[dict] = []
    wanted = {window_key(w) for w in windows}
    by_book: dict[tuple[str, str], list[dict]] = {}
    for g in generations:
        if window_key(g) in wanted:
            by_book.setdefault((g["book"], g["set"]), []).append(g)
    audit = {window_key(w): w.get("audit", True) for w in windows}
    for name in todo_text:
        m = metric_objs[name]
        for (book, set_), gs in sorted(by_book.items()):
            # a removed book is graded on its audit windows; with them the tuned ones, as <set>:all
            graded = [g for g in gs if audit[window_key(g)]]
            parts = {set_: graded} if len(graded) == len(gs) else {set_: graded, set_ + ALL_WINDOWS: gs}
            for name_of_set, part in parts.items():
                if (step, book, name_of_set, name) not in have:
                    values = [m.fn(g["output"], g["reference"]) for g in part]
                    new.append(_row(step, book, name_of_set, name, values, cfg.seed))
    for m in todo_model:
        new.extend(r for r in m.compute(ctx) if _key(r) not in have)
    atomic_write_jsonl(results_path, results + new)
    return new


def _row(step, book, set_, metric, values, seed) -> dict:
    agg = aggregate(values, seed=seed)
    return {"step": step, "book": book, "set": set_, "metric": metric, "value": agg["value"],
            "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "n": agg["n"]}


def load_results(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / RESULTS)
