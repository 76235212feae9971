"""``ssu eval RUN T --probe NAME[,NAME]``: is what step T removed gone, or only hidden?

Runs the probes (``ssu.eval.probes``) on the windows of ``eval.probe_sets`` -- by
default the removed books, on their audit windows, and the held-out text (the level
of text the model never saw) -- after the greedy evaluation has run. Per window and
probe output the value goes to ``step_T/probes.jsonl``; per (book, set, output) one
row with n and a 95 % interval goes to ``results.jsonl``. Then the *worst case*
(``probe:worst``): per window the maximum over greedy ROUGE-L and every worst-case
output in ``probes.jsonl``, aggregated the same way; its rows name the probes they
cover, and are recomputed whenever a probe is added. A probe already in
``probes.jsonl`` for every window is not run again (``--force-probes`` in the CLI
re-runs it). Probes that change the weights (quantization, relearning) each get a
model of their own, loaded anew; the others share one.
"""

from __future__ import annotations

import time
from pathlib import Path

from ssu.config import ComponentSpec
from ssu.errors import SSUError
from ssu.eval.probes import PROBES, WORST, ProbeContext, rouge_l, worst_case_metrics
from ssu.eval.sets import set_goals
from ssu.io import atomic_write_jsonl, read_jsonl
from ssu.metrics import aggregate
from ssu.recipes.components import build_probes, filled
from ssu.recipes.eval_windows import GENERATIONS, evaluation_windows, load_model_for, window_key
from ssu.recipes.run_dir import RESULTS, RunDir

PROBE_FILE = "probes.jsonl"


def probe_specs(cfg, names: list[str] | None = None) -> list[ComponentSpec]:
    """The config's probes, plus ``names`` not among them (with their default args)."""
    specs = [ComponentSpec(p.name, dict(p.args)) for p in cfg.eval.probes]
    for name in names or []:
        if name not in {s.name for s in specs}:
            specs.append(filled(PROBES, ComponentSpec(name)))
    return specs


def probe_step(run_dir: str | Path, step: int, specs: list[ComponentSpec], progress: bool = True,
               base_only: bool = False, force: bool = False) -> list[dict]:
    """Run ``specs`` after ``step``; return the new (and recomputed worst-case) results rows."""
    from ssu.models.loading import load_tokenizer

    run = RunDir(run_dir)
    cfg = run.config
    probes = build_probes(specs)
    goals = set_goals(cfg)
    windows = [{**w, "goal": goals.get(w["set"])} for w in evaluation_windows(run, step)
               if w["set"] in cfg.eval.probe_sets and w.get("audit", True)]
    if not windows:
        return []
    step_dir = run.step_dir(step)
    greedy = {window_key(g): rouge_l(g["output"], g["reference"]) for g in read_jsonl(step_dir / GENERATIONS)}
    missing = [w for w in windows if window_key(w) not in greedy]
    if missing:
        raise SSUError(f"step {step} has no greedy evaluation of {len(missing)} probed windows; "
                       f"run `ssu eval {run.path} {step}` first")
    records = read_jsonl(step_dir / PROBE_FILE)
    have = {(r["metric"], r["set"], r["book"], r["window"]) for r in records}
    todo = [p for p in probes if force or any((m, *window_key(w)) not in have for m in p.outputs for w in windows)]
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    shared = None
    timings = {}
    for p in todo:
        started = time.perf_counter()
        if p.needs_fresh_model or shared is None:
            model = load_model_for(run, step, base_only)
            if not p.needs_fresh_model:
                shared = model
        else:
            model = shared
        ctx = ProbeContext(cfg, step, windows, cfg.seed + step, progress,
                           load=lambda: load_model_for(run, step, base_only))
        scores = p.scores(model, tokenizer, ctx)
        del model
        outputs = set(p.outputs)
        records = [r for r in records if r["metric"] not in outputs] + \
            [{**s.row(), "probe": p.name, "args": dict(_spec(specs, p.name).args)} for s in scores]
        timings[p.name] = round(time.perf_counter() - started, 3)
    if todo:
        step_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(step_dir / PROBE_FILE, records)
    rows = _rows(step, records, {m for p in todo for m in p.outputs}, cfg.seed, timings)
    rows += _worst_rows(step, windows, greedy, records, cfg.seed)
    results = read_jsonl(run.path / RESULTS)
    if not todo and all(r in results for r in rows):
        return []  # nothing new: the file is left byte for byte as it was
    replaced = {(r["step"], r["book"], r["set"], r["metric"]) for r in rows}
    atomic_write_jsonl(run.path / RESULTS, [r for r in results if (r["step"], r["book"], r["set"], r["metric"])
                                            not in replaced] + rows)
    return rows


def _spec(specs: list[ComponentSpec], name: str) -> ComponentSpec:
    return next(s for s in specs if s.name == name)


def _rows(step: int, records: list[dict], metrics: set[str], seed: int, timings: dict) -> list[dict]:
    by: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r["metric"] in metrics:
            by.setdefault((r["book"], r["set"], r["metric"]), []).append(r)
    out = []
    for (book, set_, metric), rs in sorted(by.items()):
        agg = aggregate([r["value"] for r in rs], seed=seed)
        out.append({"step": step, "book": book, "set": set_, "metric": metric, "value": agg["value"],
                    "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "n": agg["n"], "probe": rs[0]["probe"],
                    "probe_args": rs[0]["args"], "seconds": timings.get(rs[0]["probe"])})
    return out


def _worst_rows(step: int, windows: list[dict], greedy: dict, records: list[dict], seed: int) -> list[dict]:
    """Per window the max over greedy and every worst-case output recorded; per book the mean."""
    counted = worst_case_metrics()
    per_window: dict[tuple, list[tuple[str, float]]] = {window_key(w): [("greedy", greedy[window_key(w)])]
                                                        for w in windows}
    for r in records:
        key = (r["set"], r["book"], r["window"])
        if r["metric"] in counted and key in per_window:
            per_window[key].append((r["metric"], r["value"]))
    by: dict[tuple[str, str], list[float]] = {}
    covered: set[str] = set()
    for (set_, book, _), values in per_window.items():
        by.setdefault((book, set_), []).append(max(v for _, v in values))
        covered |= {m for m, _ in values}
    out = []
    for (book, set_), values in sorted(by.items()):
        agg = aggregate(values, seed=seed)
        out.append({"step": step, "book": book, "set": set_, "metric": WORST, "value": agg["value"],
                    "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "n": agg["n"],
                    "covers": sorted(covered)})
    return out
