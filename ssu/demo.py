"""``ssu demo``: the whole pipeline on a laptop CPU in a few minutes, no downloads.

synthetic corpus -> prepare -> tiny model -> memorized target -> ``steps`` SSU time
steps, each followed by evaluation -> book x step ROUGE-L matrix, utility, plots.
Every stage writes its output atomically and is skipped when that output already
exists, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from data_prep.fsutil import read_json


def run_demo(out_dir: str | Path = "ssu-demo", books: int = 6, steps: int = 3, seed: int = 0,
             words_per_book: int = 1000, method: str = "ssu") -> Path:
    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.eval.evaluate import evaluate_step
    from ssu.eval.report import format_matrix, write_plots
    from ssu.models.memorize import MemorizeConfig, memorize
    from ssu.models.tiny import make_tiny_model
    from ssu.run import RunDir
    from ssu.step import init_run, run_step

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus, prepared, tiny, memorized, run = (out / n for n in ("corpus", "prepared", "tiny", "memorized", "run"))
    start = time.perf_counter()

    def stage(name: str, done: bool, fn) -> None:
        if done:
            click.echo(f"[{time.perf_counter() - start:5.0f}s] {name}: already done, skipped")
            return
        t = time.perf_counter()
        fn()
        click.echo(f"[{time.perf_counter() - start:5.0f}s] {name}: {time.perf_counter() - t:.1f}s")

    stage(f"synthetic corpus ({books} books)", corpus.exists(),
          lambda: write_synthetic_corpus(corpus, n_books=books, seed=seed, words_per_book=words_per_book))
    stage("prepare windows", prepared.exists(), lambda: prepare_books(corpus, prepared))
    stage("tiny model", tiny.exists(), lambda: make_tiny_model(prepared, tiny, seed=seed))
    stage("memorize (target ROUGE-L 0.9)", memorized.exists(),
          lambda: memorize(str(tiny), prepared, memorized, MemorizeConfig(seed=seed, device="cpu")))
    record = read_json(memorized / "memorize.json")
    if not record["target_reached"]:
        click.echo("warning: the memorized model did not reach the target ROUGE-L; unlearning figures "
                   "will be less clear", err=True)
    if not (run / "config.json").exists():
        init_run(run, {"model": str(memorized), "data": str(prepared), "method": method, "seed": seed,
                       "device": "cpu", "train": {"finetune": "full"}})
    stage("evaluate memorized model (step 0)", False, lambda: evaluate_step(run, 0))
    done = set(RunDir(run).completed_steps())
    for t in range(1, steps + 1):
        stage(f"unlearning step {t}", t in done, lambda t=t: run_step(run, t))
        stage(f"evaluate step {t}", False, lambda t=t: evaluate_step(run, t))
    click.echo("")
    click.echo(format_matrix(run))
    plots = write_plots(run)
    click.echo("")
    click.echo(f"plots: {', '.join(str(p) for p in plots)}")
    click.echo(f"run directory: {run.resolve()}  (try `ssu stack {run}` and `ssu report {run}`)")
    click.echo(f"total {time.perf_counter() - start:.0f}s")
    return run
