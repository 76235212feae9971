"""``ssu compare``: several unlearning methods on the same books, model, schedule and seed.

A comparison config names the methods; each gets a sibling run directory
``OUT/<method>/`` made by the same ``init_run`` / ``run_step`` / ``evaluate_step``
as a hand-driven run, so a comparison is nothing but ordinary runs plus a summary.
Completed steps and computed results are skipped, so the command can be re-run
after a crash (or with a method added) and redoes only what is missing. With
``retrain: true`` each reported step also gets the gold-standard reference, a model
memorized without the removed books (``OUT/retrain/step_T``, see ssu.recipes.retrain).

The summary -- ``OUT/comparison.md``, ``OUT/comparison.json`` and two PNGs -- is
computed from the runs' ``results.jsonl`` and manifests only. Which sets are
"retained" or "held out" is read from the evaluation-set registry (their goals), and
every lm-eval metric the runs have becomes a column. With the retrain reference, each
method and step also gets MUSE's PrivLeak (see :func:`priv_leak_vs_retrain`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from ssu.config import load, load_yaml, merge
from ssu.errors import SSUError
from ssu.io import atomic_write_json, atomic_write_text
from ssu.methods import METHODS
from ssu.presets import PRESETS
from ssu.recipes.evaluate import evaluate_step, load_results
from ssu.recipes.init import init_run, resolve_config
from ssu.recipes.memorize import load_record
from ssu.recipes.retrain import EVAL, retrain
from ssu.recipes.run_dir import CONFIG, RunDir
from ssu.recipes.step import run_step

RETRAIN = "retrain"
METRIC = "rougeL_f"
# Columns of the table: key in a summary row, header, format. Probe columns (worst case,
# relearned) appear when some row has them (``eval.probes``).
PROBE_COLUMNS = {"forget_worst", "forget_relearn", "relearn_gap", "earlier_worst", "heldout_worst", "user_forget"}
COLUMNS = [
    ("forget", "forget ROUGE-L", "{:.3f}"),
    ("forget_worst", "forget worst case", "{:.3f}"),
    ("forget_relearn", "forget relearned", "{:.3f}"),
    ("relearn_gap", "relearning gap to retrain", "{:+.3f}"),
    ("user_forget", "user sets (forget)", "{:.3f}"),
    ("earlier", "earlier-forgotten ROUGE-L", "{:.3f}"),
    ("earlier_worst", "earlier worst case", "{:.3f}"),
    ("future", "not-yet-removed ROUGE-L", "{:.3f}"),
    ("retained", "retained ROUGE-L", "{:.3f}"),
    ("heldout", "never-seen ROUGE-L", "{:.3f}"),
    ("heldout_worst", "never-seen worst case", "{:.3f}"),
    ("heldout_ppl", "held-out ppl", "{:.2f}"),
    ("retained_ppl", "retained ppl", "{:.2f}"),
    ("mia_auc", "MIA AUC (loss)", "{:.3f}"),
    ("priv_leak", "PrivLeak %", "{:+.1f}"),
    ("seconds", "time (s)", "{:.1f}"),
    ("gap_to_retrain", "gap to retrain", "{:+.3f}"),
]


@dataclass
class CompareConfig:
    """A comparison: every method (or preset) in ``methods`` is one run ``OUT/<name>`` on the
    same model, data and seed; ``common`` keys go to every run, ``per_method`` to one."""

    model: str = MISSING
    data: str = MISSING
    out: Path = MISSING
    steps: Any = MISSING  # a count N (steps 1..N) or a list; every step up to the largest is run
    methods: list[str] = MISSING
    common: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrain: bool = False

    def __post_init__(self) -> None:
        steps = self.steps
        if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
            steps = list(range(1, steps + 1))
        elif not (isinstance(steps, list) and steps and all(isinstance(s, int) and s >= 1 for s in steps)):
            raise SSUError(f"steps must be a count N >= 1 or a list of steps >= 1, got {steps!r}")
        self.steps = sorted(set(steps))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise SSUError("methods must be a non-empty list of distinct method names")
        for m in self.methods:
            if m not in PRESETS:
                METHODS.get(m)  # raises with the closest name
        stray = sorted(set(self.per_method) - set(self.methods))
        if stray:
            raise SSUError(f"per_method names {', '.join(stray)}, which is not in methods")
        if "method" in self.common or any(set(v.get("method") or {}) - {"args"} for v in self.per_method.values()):
            raise SSUError("the method is named by the methods list; per_method may give its args only "
                           "(per_method: {npo: {method: {args: {beta: 0.2}}}})")

    def run_dir(self, method: str) -> Path:
        return self.out / method

    def overrides(self, method: str) -> dict[str, Any]:
        """The run config of one method: common keys, then its own, then model/data/method."""
        model = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model
        over = merge(self.common, self.per_method.get(method, {}))
        args = (over.pop("method", None) or {}).get("args") or {}
        return {**over, "model": model, "data": str(Path(self.data).resolve()),
                "method": {"name": method, "args": args} if args else method}


def load_compare_config(source: str | Path | dict[str, Any]) -> CompareConfig:
    """Validate a comparison config (a YAML path or a mapping); paths are relative to the cwd."""
    data = dict(source) if isinstance(source, dict) else load_yaml(source)
    cc = load(CompareConfig, data, where="compare config")
    for m in cc.methods:
        cfg = resolve_config(cc.overrides(m))  # rejects unknown keys and bad values early
        if not cfg.eval.enabled or METRIC not in cfg.eval.metrics:
            raise SSUError(f"a comparison needs evaluation with {METRIC} (method {m})")
    return cc


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def ensure_run(cc: CompareConfig, method: str) -> Path:
    """Create OUT/<method>, or check that an existing one was made with the same config
    (every key the comparison sets; ``ssu init`` fills what it leaves unset)."""
    path, over = cc.run_dir(method), cc.overrides(method)
    if not (path / CONFIG).is_file():
        init_run(path, over)
        return path
    stored = _flatten(RunDir(path).config.to_dict())
    intended = _flatten(resolve_config(over).to_dict())
    diff = [f"{k}: {stored.get(k)!r} != {v!r}" for k, v in intended.items() if v is not None and stored.get(k) != v]
    if diff:
        raise SSUError(f"{path} was made with a different config ({diff[0]}); delete it or change out")
    return path


def run_comparison(cc: CompareConfig, progress: bool = True, log: Callable[[str], None] = lambda _: None) -> dict:
    """Run (or finish) every method and the retrain references; write the summary."""
    from data_prep import load_schedule

    schedule = load_schedule(cc.data)["steps"]
    absent = [s for s in range(1, max(cc.steps) + 1) if s not in schedule]
    if absent:
        raise SSUError(f"the schedule of {cc.data} has no step {absent[0]} (it has {len(schedule)} steps)")
    for method in cc.methods:
        path = ensure_run(cc, method)
        evaluate_step(path, 0, progress=progress)
        for t in range(1, max(cc.steps) + 1):
            entry = run_step(path, t, progress=progress)
            log(f"{method}: step {t} " + ("already complete" if entry is None
                                          else f"done in {entry['timings']['total_seconds']:.1f}s"))
            if t in cc.steps:
                evaluate_step(path, t, progress=progress)
    if cc.retrain:
        # The common keys carry the seed and eval settings, so the evaluated windows are the same.
        for t in cc.steps:
            retrain(cc.model, cc.data, cc.out / RETRAIN / f"step_{t}", t, run_overrides=cc.common,
                    progress=progress)
            log(f"retrain: step {t} reference ready")
    return write_summary(cc)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_results(results: list[dict], step: int, goals: dict[str, str | None] | None = None
                      ) -> dict[str, float | None]:
    """Forget / earlier-forgotten / not-yet-removed / retained ROUGE-L (means over books),
    perplexities, the loss MIA AUC and every lm-eval metric, after ``step``; "retained" is the
    sets whose goal is keep other than the books not yet removed (``future``, apart: they are
    what a protection computed from retain data has not seen), "held out" those whose goal is
    unseen."""
    from ssu.eval.model_metrics.lm_eval import PREFIX
    from ssu.eval.model_metrics.mia import SET as MIA_SET
    from ssu.eval.sets import ALL_WINDOWS, SETS, set_goals

    goals = goals if goals is not None else set_goals()
    keep = tuple(s for s, g in goals.items() if g == "keep")
    # the user's own prompts for removed books (paraphrases, eval.extra_sets with goal forget):
    # one more worst-case column beside the probes
    user_forget = tuple(s for s, g in goals.items() if g == "forget" and s not in SETS and not s.endswith(ALL_WINDOWS))
    unseen = tuple(s for s, g in goals.items() if g == "unseen")

    def vals(metric: str, sets: tuple[str, ...]) -> list[float]:
        return [r["value"] for r in results
                if r["step"] == step and r["metric"] == metric and r["set"] in sets and r["book"] != "*"]

    whole = {r["metric"]: r["value"] for r in results if r["step"] == step and r["book"] == "*"
             and (r["metric"].startswith(PREFIX) or (r["metric"] == "mia_auc_loss" and r["set"] == MIA_SET))}
    from ssu.eval.probes import WORST

    return {"forget": _mean(vals(METRIC, ("removed-now",))),
            "forget_worst": _mean(vals(WORST, ("removed-now",))),
            "forget_relearn": _mean(vals("probe:relearn", ("removed-now",))),
            "earlier": _mean(vals(METRIC, ("removed-earlier",))),
            "earlier_worst": _mean(vals(WORST, ("removed-earlier",))),
            "heldout_worst": _mean(vals(WORST, unseen)),
            "user_forget": _mean(vals(METRIC, user_forget)),
            "future": _mean(vals(METRIC, ("future",))),
            "retained": _mean(vals(METRIC, tuple(k for k in keep if k != "future"))),
            "heldout": _mean(vals(METRIC, unseen)),  # text never trained on: the level removal aims at
            "heldout_ppl": _mean(vals("perplexity", unseen)),
            # the utility signal left when a layout has no held-out text (Gutenberg protocol)
            "retained_ppl": _mean(vals("perplexity", keep)),
            "mia_auc": whole.pop("mia_auc_loss", None),
            **dict(sorted(whole.items()))}


def priv_leak_vs_retrain(auc: float | None, auc_retrain: float | None) -> float | None:
    """MUSE's PrivLeak (%) of a model against the retrain reference, from our loss MIA AUCs.

    Our AUC counts a lower loss as "member" (ssu.metrics.privacy); MUSE's is
    P(forget loss > held-out loss), i.e. 1 - ours (ties count half in both), so
    PrivLeak = (AUC_MUSE - AUC_MUSE,retrain) / AUC_MUSE,retrain x 100: near 0 is ideal,
    strongly negative = still memorized, strongly positive = over-unlearned.
    """
    from ssu.metrics import priv_leak

    if auc is None or auc_retrain is None or auc_retrain >= 1.0:
        return None
    return priv_leak(1.0 - auc, 1.0 - auc_retrain)


def collect(cc: CompareConfig) -> dict[str, Any]:
    """Summary rows per (step, method), the retrain rows, and the memorized model at step 0."""
    from ssu.eval.sets import set_goals

    rows, base = [], None
    for method in cc.methods:
        run = RunDir(cc.run_dir(method))
        results, steps, goals = load_results(run.path), run.manifest["steps"], set_goals(run.config)
        if base is None:
            s0 = summarize_results(results, 0, goals)
            base = {"memorized": s0["future"] if s0["future"] is not None else s0["retained"],
                    "heldout_ppl": s0["heldout_ppl"]}
        for t in cc.steps:
            if str(t) in steps:
                rows.append({"step": t, "method": method, **summarize_results(results, t, goals),
                             "seconds": steps[str(t)]["timings"]["total_seconds"]})
    if cc.retrain:
        for t in cc.steps:
            ref = cc.out / RETRAIN / f"step_{t}"
            if (ref / EVAL / CONFIG).is_file():
                rows.append({"step": t, "method": RETRAIN,
                             **summarize_results(load_results(ref / EVAL), t, set_goals(RunDir(ref / EVAL).config)),
                             "seconds": load_record(ref / "model").get("seconds")})
    refs = {r["step"]: r for r in rows if r["method"] == RETRAIN}
    for r in rows:
        ref = refs.get(r["step"], {})
        r["gap_to_retrain"] = None if ref.get("forget") is None or r["forget"] is None else r["forget"] - ref["forget"]
        r["relearn_gap"] = None if ref.get("forget_relearn") is None or r.get("forget_relearn") is None \
            else r["forget_relearn"] - ref["forget_relearn"]
        r["priv_leak"] = priv_leak_vs_retrain(r.get("mia_auc"), ref.get("mia_auc"))
    return {"base": base or {}, "rows": rows}


def columns(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The fixed columns, then one per lm-eval metric any row has."""
    from ssu.eval.model_metrics.lm_eval import PREFIX

    extra = sorted({k for r in summary["rows"] for k in r if k.startswith(PREFIX)})
    shown = [c for c in COLUMNS if c[0] not in PROBE_COLUMNS or any(r.get(c[0]) is not None for r in summary["rows"])]
    return shown + [(k, k.removeprefix(PREFIX), "{:.3f}") for k in extra]


def format_table(summary: dict[str, Any], books: dict[int, list[str]] | None = None) -> str:
    """Markdown: one table per step, one row per method (retrain last)."""
    base, lines = summary["base"], ["# Method comparison", ""]
    if base.get("memorized") is not None:
        ppl = "" if base.get("heldout_ppl") is None else f", held-out perplexity {base['heldout_ppl']:.2f}"
        lines += [f"Memorized model (step 0): mean ROUGE-L {base['memorized']:.3f} over the books{ppl}.", ""]
    cols = columns(summary)
    for t in sorted({r["step"] for r in summary["rows"]}):
        removed = f" (removed: {', '.join(books[t])})" if books and t in books else ""
        lines += [f"## After step {t}{removed}", "",
                  "| method | " + " | ".join(h for _, h, _ in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for r in [r for r in summary["rows"] if r["step"] == t]:
            cells = ["—" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(cc: CompareConfig) -> dict[str, Any]:
    from data_prep import load_schedule
    from ssu.compare.plots import write_compare_plots

    summary = collect(cc)
    books = load_schedule(cc.data)["steps"]
    atomic_write_text(cc.out / "comparison.md", format_table(summary, books))
    atomic_write_json(cc.out / "comparison.json", {**summary, "methods": cc.methods, "steps": cc.steps})
    summary["plots"] = [str(p) for p in write_compare_plots(summary, cc.out)]
    return summary
