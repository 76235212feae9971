"""``lm_eval``: utility on lm-evaluation-harness tasks, scored on the composed model in memory.

The model after step T (base + the stack, as evaluation composes it) is wrapped as
``HFLM(pretrained=<model object>, tokenizer=...)`` -- nothing is saved or reloaded --
and ``lm_eval.simple_evaluate`` runs the tasks of its ``args`` (``eval.model_metrics:
[{name: lm_eval, args: {tasks: [mmlu]}}]``, or ``ssu eval --lm-eval mmlu``).
Every numeric metric lm-eval reports becomes a row ``lm_eval:<task>:<metric>`` (plus
``:<filter>`` when the filter is not ``none``), book ``*``, set ``lm-eval``, with its
``stderr``, ``ci_low``/``ci_high`` = value -/+ 1.96 stderr, ``n`` (documents scored) and
lm-eval's own ``higher_is_better``. A task already in ``results.jsonl`` for the step
is not run again.

Tasks come from lm-eval's built-in list (MMLU, ARC, ...; these download their data
sets, so they need network access) and from ``include``, a directory of task YAML
files (``experiments/lm_eval/`` ships an offline one). When every task named is found
there, lm-eval's ~230 built-in task folders are not indexed at all (that takes seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ssu.errors import SSUError
from ssu.eval.model_metrics import LM_EVAL_PREFIX, MODEL_METRICS, ModelContext, ModelMetric
from ssu.registry import unknown_message

PREFIX = LM_EVAL_PREFIX
SET = "lm-eval"
BOOTSTRAP_ITERS = 1000  # lm-eval's bootstrap, for metrics without a closed-form stderr


@dataclass
class LMEvalArgs:
    tasks: list[str] = field(default_factory=list)  # lm-eval task names
    include: str | None = None  # a directory of extra task YAML files
    limit: int | None = None  # documents per task (None: all)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise SSUError("lm_eval: limit must be >= 1")
        if self.include is not None and not Path(self.include).is_dir():
            raise SSUError(f"lm_eval: include {self.include} is not a directory")


def _done(ctx: ModelContext, task: str) -> bool:
    return any(k[0] == ctx.step and k[2] == SET and k[3].startswith(f"{PREFIX}{task}:") for k in ctx.have)


def task_manager(tasks: list[str], include: str | None):
    """A TaskManager that knows every task in ``tasks``; one-line error (did you mean) otherwise."""
    from lm_eval.tasks import TaskManager

    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    tm = TaskManager(include_path=include) if include else TaskManager()
    for t in tasks:
        if t not in tm.all_tasks:
            raise SSUError(unknown_message("lm-eval task", t, sorted(tm.all_tasks)).split(" Available:")[0]
                           + (f" (include path: {include})" if include else ""))
    return tm


@MODEL_METRICS.register("lm_eval", outputs={}, description="lm-eval-harness tasks (args: tasks, include, limit)")
class LMEval(ModelMetric):
    Args = LMEvalArgs

    def missing(self, ctx: ModelContext) -> bool:
        return any(not _done(ctx, t) for t in self.args.tasks)

    def compute(self, ctx: ModelContext) -> list[dict]:
        tasks = [t for t in self.args.tasks if not _done(ctx, t)]
        if not tasks:
            return []
        try:
            from lm_eval import simple_evaluate
            from lm_eval.models.huggingface import HFLM
        except ImportError as e:
            raise SSUError(f"lm-eval tasks need lm-eval: pip install -e '.[eval]' ({e})") from e
        tm = task_manager(tasks, self.args.include)
        # No max_length: lm-eval takes the model's own context (few-shot MMLU prompts run
        # past train.max_length); batch_size bounds the rows of each scoring forward.
        lm = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=ctx.config.eval.batch_size)
        seed = ctx.config.seed
        try:
            out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=self.args.limit,
                                  log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        except FileNotFoundError as e:  # a local task's data file, named in one line
            raise SSUError(f"lm-eval: {e}") from None
        return rows_from_results(out, ctx.step)


def rows_from_results(out: dict, step: int) -> list[dict]:
    """results.jsonl rows from ``simple_evaluate``'s output (every numeric metric of every task)."""
    rows = []
    for task, metrics in sorted(out["results"].items()):
        n = (out.get("n-samples", {}).get(task) or {}).get("effective")
        direction = out.get("higher_is_better", {}).get(task, {})
        for key, value in sorted(metrics.items()):
            name, _, filt = key.partition(",")
            if "_stderr" in name or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            value = float(value)
            rows.append({"step": step, "book": "*", "set": SET,
                         "metric": f"{PREFIX}{task}:{name}" + (f":{filt}" if filt not in ("", "none") else ""),
                         "value": value, "stderr": stderr,
                         "ci_low": None if stderr is None else value - 1.96 * stderr,
                         "ci_high": None if stderr is None else value + 1.96 * stderr,
                         "n": n, "higher_is_better": direction.get(name)})
    return rows
