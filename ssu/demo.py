"""``ssu demo``: the whole pipeline on a laptop CPU in about a minute and a half, no downloads.

synthetic corpus -> prepare -> tiny model -> memorized target -> ``steps`` time steps of
plain ``ssu`` (the paper's method) and of the ``ssu-stable`` preset on the same world,
each step followed by evaluation -> both book x step ROUGE-L matrices, a side-by-side
summary, and a forget-vs-keep plot with the level of the book the model never saw.
Every stage writes its output atomically and is skipped when that output already
exists, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ssu.io import read_json, write_figure

METHODS = ("ssu", "ssu-stable")


def run_demo(out_dir: str | Path = "ssu-demo", books: int = 6, steps: int = 3, seed: int = 0,
             words_per_book: int = 1000, methods: tuple[str, ...] = METHODS) -> dict[str, Path]:
    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.models.tiny import make_tiny_model
    from ssu.recipes.evaluate import evaluate_step
    from ssu.recipes.init import init_run
    from ssu.recipes.memorize import MemorizeConfig, memorize
    from ssu.recipes.report import format_matrix
    from ssu.recipes.run_dir import RunDir
    from ssu.recipes.step import run_step

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus, prepared, tiny, memorized = (out / n for n in ("corpus", "prepared", "tiny", "memorized"))
    runs = {m: out / f"run-{m}" for m in methods}
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
    if not read_json(memorized / "memorize.json")["target_reached"]:
        click.echo("warning: the memorized model did not reach the target ROUGE-L; unlearning figures "
                   "will be less clear", err=True)
    for method, run in runs.items():
        if not (run / "config.json").exists():
            init_run(run, {"model": str(memorized), "data": str(prepared), "method": method, "seed": seed,
                           "device": "cpu", "train": {"finetune": "full"}})
        stage(f"{method}: evaluate the memorized model (step 0)", False, lambda run=run: evaluate_step(run, 0))
        done = set(RunDir(run).completed_steps())
        for t in range(1, steps + 1):
            stage(f"{method}: unlearning step {t}", t in done, lambda run=run, t=t: run_step(run, t, progress=False))
            stage(f"{method}: evaluate step {t}", False, lambda run=run, t=t: evaluate_step(run, t, progress=False))
    for method, run in runs.items():
        click.echo(f"\n== {method}")
        click.echo(format_matrix(run))
    click.echo("")
    click.echo(side_by_side(runs, steps))
    plot = write_demo_plot(runs, out / "forget_vs_keep.png")
    click.echo(f"\nplot: {plot}")
    click.echo(f"run directories: {', '.join(str(r) for r in runs.values())}  "
               f"(try `ssu stack {runs[methods[0]]}` and `ssu report {runs[methods[0]]}`)")
    click.echo(f"total {time.perf_counter() - start:.0f}s")
    return runs


def _summary(run: Path, step: int) -> dict:
    from ssu.compare.runner import summarize_results
    from ssu.eval.sets import set_goals
    from ssu.recipes.evaluate import load_results
    from ssu.recipes.run_dir import RunDir

    return summarize_results(load_results(run), step, set_goals(RunDir(run).config))


def side_by_side(runs: dict[str, Path], steps: int) -> str:
    """Per step and method: ROUGE-L of the book removed now and of earlier ones (lower =
    forgotten; on their audit windows), each beside its worst case over the probes, of
    retained and not-yet-removed books (higher = kept), the held-out book the model never
    saw (the level a removed book would have had it never been learned) with its worst
    case, and held-out perplexity."""
    cols = [("forget", "removed now"), ("forget_worst", "worst case"), ("earlier", "removed earlier"),
            ("earlier_worst", "worst case"), ("retained", "retained"), ("future", "not yet removed"),
            ("heldout", "never seen"), ("heldout_worst", "worst case"), ("heldout_ppl", "held-out ppl")]
    lines = ["side by side (ROUGE-L of greedy continuations, and the worst case over the probes: per window "
             "the max over shifted prompts, 8 samples, 8/4-bit and bf16 weights; held-out perplexity)",
             f"{'step':<6}{'method':<12}" + "".join(f"{h:>16}" for _, h in cols)]
    for t in range(0, steps + 1):
        for method, run in runs.items():
            s = _summary(run, t)
            cells = "".join(f"{'-':>16}" if s.get(k) is None else f"{s[k]:>16.2f}" if k == "heldout_ppl"
                            else f"{s[k]:>16.3f}" for k, _ in cols)
            lines.append(f"{t:<6}{method:<12}{cells}")
            if t == 0:
                break  # step 0 is the same memorized model for every method
    return "\n".join(lines)


def write_demo_plot(runs: dict[str, Path], path: Path) -> Path:
    """Forget vs keep: each method's path over the steps (from the memorized model), and the
    ROUGE-L of the held-out book the model never saw, which removal should come down to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.8))
    heldout = heldout_worst = None
    for i, (method, run) in enumerate(runs.items()):
        pts, worst = [], []
        for t in sorted({r["step"] for r in _results(run)}):
            s = _summary(run, t)
            forget = s["forget"] if s["forget"] is not None else s["earlier"]
            keep = [v for v in (s["retained"], s["future"]) if v is not None]
            if t == 0:
                heldout, heldout_worst = s["heldout"], s["heldout_worst"]
                forget = s["future"]  # before any step, the books to remove are all still memorized
            if forget is not None and keep:
                pts.append((t, forget, sum(keep) / len(keep)))
                w = s["forget_worst"] if s["forget"] is not None else s["earlier_worst"]
                if w is not None:
                    worst.append((w, sum(keep) / len(keep)))
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-o", color=f"C{i}", label=f"{method} (greedy)")
        if worst:
            ax.plot([p[0] for p in worst], [p[1] for p in worst], ":", marker="o", mfc="none", color=f"C{i}",
                    label=f"{method} (worst case over probes)")
        for t, x, y in pts:
            ax.annotate(str(t), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=f"C{i}")
    if heldout is not None:
        ax.axvline(heldout, color="grey", linestyle="--", label="never seen (held-out book)")
    if heldout_worst is not None:
        ax.axvline(heldout_worst, color="grey", linestyle=":", label="never seen, worst case")
    ax.set(xlabel="ROUGE-L of the book removed at the step (lower = forgotten)",
           ylabel="ROUGE-L of retained and not-yet-removed books", title="Forget vs keep (labels: step)",
           xlim=(-0.02, 1.05), ylim=(-0.02, 1.05))
    ax.legend(fontsize=8, loc="lower right")
    return write_figure(fig, path)


def _results(run: Path) -> list[dict]:
    from ssu.recipes.evaluate import load_results

    return load_results(run)
