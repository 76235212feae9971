"""The ``ssu`` command line: one command per pipeline stage and per time step.

Every command validates its input up front, prints a one-line ``error:`` message
and exits 1 on bad input, and writes its outputs atomically, so it is safe to
re-run after a crash.
"""

from __future__ import annotations

import sys

import click

from ssu.errors import SSUError


class _Group(click.Group):
    """Turn user-facing errors into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (SSUError, FileExistsError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, FileExistsError):
                msg = f"{e.filename or msg} already exists"
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="ssu")
def main() -> None:
    """Stable Sequential Unlearning: remove books from a causal LM one time step at a time."""


# --- data -----------------------------------------------------------------------


@main.command()
@click.argument("books_dir", type=click.Path(file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--prompt-words", default=100, show_default=True, type=click.IntRange(1))
@click.option("--continuation-words", default=100, show_default=True, type=click.IntRange(1))
@click.option("--max-words", default=None, type=click.IntRange(1), help="Keep only the first N words of each book.")
@click.option("--lowercase", is_flag=True, help="Lower-case the text (as the public reference does).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def prepare(books_dir, out_dir, prompt_words, continuation_words, max_words, lowercase, overwrite):
    """Clean books laid out as time_step_{t}/*.txt and cut them into prompt/continuation windows."""
    from data_prep import prepare_books

    schedule = prepare_books(
        books_dir, out_dir, prompt_words=prompt_words, continuation_words=continuation_words,
        max_words=max_words, lowercase=lowercase, overwrite=overwrite,
    )
    steps = schedule["steps"]
    click.echo(
        f"prepared {sum(len(b) for b in steps.values())} books over {len(steps)} steps "
        f"(+{len(schedule['retain'])} retain, {len(schedule['heldout'])} held-out) -> {out_dir}"
    )


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--books", "n_books", default=6, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--words-per-book", default=1000, show_default=True, type=click.IntRange(10))
@click.option("--retain", "n_retain", default=2, show_default=True, type=click.IntRange(0))
@click.option("--heldout", "n_heldout", default=1, show_default=True, type=click.IntRange(0))
@click.option("--overwrite", is_flag=True)
def synth(out_dir, n_books, seed, words_per_book, n_retain, n_heldout, overwrite):
    """Write a synthetic corpus in the raw books layout (one book per time step)."""
    from data_prep import write_synthetic_corpus

    write_synthetic_corpus(
        out_dir, n_books=n_books, seed=seed, words_per_book=words_per_book,
        n_retain=n_retain, n_heldout=n_heldout, overwrite=overwrite,
    )
    click.echo(f"wrote {n_books} books, {n_retain} retain, {n_heldout} held-out -> {out_dir}")


# --- models ---------------------------------------------------------------------


@main.command("tiny-model")
@click.argument("prepared_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["gpt2", "llama"]), default="gpt2", show_default=True)
@click.option("--size", type=click.Choice(["nano", "tiny", "small", "base"]), default="tiny", show_default=True)
@click.option("--vocab-size", default=2048, show_default=True, type=click.IntRange(300))
@click.option("--max-positions", default=512, show_default=True, type=click.IntRange(16))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True)
def tiny_model(prepared_dir, out_dir, arch, size, vocab_size, max_positions, seed, overwrite):
    """Train a BPE tokenizer on the corpus and save a small, freshly initialised causal LM."""
    from ssu.models.loading import model_card
    from ssu.models.tiny import make_tiny_model

    make_tiny_model(prepared_dir, out_dir, arch=arch, size=size, vocab_size=vocab_size,
                    max_positions=max_positions, seed=seed, overwrite=overwrite)
    card = model_card(out_dir)
    click.echo(f"{arch}/{size}: {card['parameters']:,} parameters, vocab {card['vocab_size']} -> {out_dir}")


@main.command()
@click.argument("model")
@click.argument("prepared_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Default: the tiny model's recommendation, else 2e-5.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--target-rouge", default=0.9, show_default=True, type=click.FloatRange(0, 1))
@click.option("--eval-every", default=5, show_default=True, type=click.IntRange(1))
@click.option("--eval-windows", default=None, type=click.IntRange(1),
              help="Windows per book to evaluate (default all).")
@click.option("--max-length", default=512, show_default=True, type=click.IntRange(8))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--generic", "generic_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory of plain-text files mixed into every epoch (keeps general ability).")
@click.option("--generic-weight", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--generic-pool", default=4096, show_default=True, type=click.IntRange(1),
              help="Generic windows sampled once; each epoch draws from them.")
@click.option("--heldout-windows", default=64, show_default=True, type=click.IntRange(0),
              help="Generic windows held out for perplexity.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run.")
@click.option("--overwrite", is_flag=True)
def memorize(model, prepared_dir, out_dir, overwrite, **opts):
    """Fine-tune MODEL on every scheduled and retain book: the target unlearning starts from."""
    from ssu.config import load
    from ssu.recipes.memorize import MemorizeConfig
    from ssu.recipes.memorize import memorize as run

    record = run(model, prepared_dir, out_dir, load(MemorizeConfig, opts, where="ssu memorize"), overwrite=overwrite)
    scores = record["rougeL_by_book"]
    for book, v in sorted(scores.items()):
        click.echo(f"  {book:<32} ROUGE-L {v:.3f}")
    for name, p in record["heldout_perplexity"].items():
        click.echo(f"  held-out perplexity ({name}, {p['windows']} windows): {p['before']:.4g} -> {p['after']:.4g}")
    state = "reached" if record["target_reached"] else "NOT reached"
    click.echo(f"target ROUGE-L {opts['target_rouge']} {state} after {record['epochs_run']} epochs "
               f"({record['seconds']:.0f}s) -> {out_dir}")


# --- sequential unlearning --------------------------------------------------------


def _parse_alphas(items) -> dict[int, float]:
    out = {}
    for item in items:
        step, _, value = item.partition("=")
        try:
            out[int(step)] = float(value)
        except ValueError:
            raise SSUError(f"--alpha expects STEP=VALUE, got {item!r}") from None
    return out


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--model", help="Base (memorized) model: local directory or hub id.")
@click.option("--data", type=click.Path(file_okay=False), help="Prepared directory (`ssu prepare`).")
@click.option("--method", default=None, help="Unlearning method or preset (default ssu); see `ssu list methods` "
              "and `ssu list presets`.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of config keys.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. train.lr=1e-4, method.args.epsilon=0, regularizers=[fisher].")
@click.option("--overwrite", is_flag=True, help="Start the run directory over.")
def init(run_dir, model, data, method, config_file, sets, overwrite):
    """Create RUN_DIR with the fully resolved config (every hyperparameter, seed, versions)."""
    from ssu.config import load_yaml, parse_set
    from ssu.recipes.components import method_label
    from ssu.recipes.init import init_run

    overrides = load_yaml(config_file) if config_file else {}
    for key, value in (("model", model), ("data", data), ("method", method)):
        if value is not None:
            overrides[key] = value
    cfg = init_run(run_dir, overrides, overwrite=overwrite, sets=parse_set(list(sets)))
    click.echo(f"initialised {run_dir}: method {method_label(cfg)}, {cfg.train.finetune} fine-tune, "
               f"lr {cfg.train.lr:g}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("t", type=int)
@click.option("--force", is_flag=True, help="Redo step T (drops T and every later step).")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation after the step.")
def step(run_dir, t, force, no_eval):
    """Perform time step T: unlearn the book(s) the schedule removes at T."""
    from ssu.recipes.step import run_step

    entry = run_step(run_dir, t, force=force)
    from ssu.engine.distributed import is_main_process, leave_process_group

    leave_process_group()  # the main process evaluates alone
    if not is_main_process():
        return
    if entry is None:
        click.echo(f"step {t} is already complete (use --force to redo it)")
    else:
        click.echo(f"step {t}: removed {', '.join(entry['books'])} in {entry['timings']['total_seconds']:.1f}s")
    if not no_eval:
        _maybe_eval(run_dir, t)


def _maybe_eval(run_dir, t):
    from ssu.engine.distributed import is_main_process
    from ssu.recipes.evaluate import evaluate_step
    from ssu.recipes.run_dir import RunDir

    # Under `accelerate launch` the main process evaluates; the others are done.
    if RunDir(run_dir).config.eval.enabled and is_main_process():
        evaluate_step(run_dir, t)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--rounding", type=click.Choice(["bfloat16", "float16", "none"]), default=None,
              help="Also show how much of each vector an export in this dtype keeps "
                   "(default: the run's dtype when it is half precision).")
def stack(run_dir, rounding):
    """List the stack of vectors: step, books, alpha, norm, density, bytes."""
    from ssu.models.loading import DTYPES, resolve_device, resolve_dtype
    from ssu.recipes.compose import composed_float32, stack_of
    from ssu.recipes.run_dir import RunDir

    run = RunDir(run_dir)
    rows = stack_of(run).describe()
    if not rows:
        click.echo("the stack is empty (no completed steps)")
        return
    if rounding is None:
        run_dtype = resolve_dtype(run.config.dtype, resolve_device(run.config.device))
        rounding = str(run_dtype).removeprefix("torch.") if run_dtype in (DTYPES["bfloat16"], DTYPES["float16"]) \
            else "none"
    kept = composed_float32(run, rounding=DTYPES[rounding])[1] if rounding != "none" else {}
    extra = f"  {rounding + ' rel.err':>15}  {'unchanged':>9}" if kept else ""
    click.echo(f"{'step':>4}  {'alpha':>6}  {'norm':>10}  {'density':>8}  {'bytes':>12}{extra}  books")
    for r in rows:
        k = kept.get(r["step"])
        cols = f"  {k['rel_error']:>15.4f}  {k['unchanged']:>9.4f}" if k else ("  " + " " * 26 if kept else "")
        click.echo(f"{r['step']:>4}  {r['alpha']:>6g}  {r['norm']:>10.4f}  {r['density']:>8.4f}  "
                   f"{r['bytes']:>12,}{cols}  {', '.join(r['books'])}")
    if kept:
        click.echo(f"rel.err: |rounded change - alpha*v| / |alpha*v| when the composed weights are stored as "
                   f"{rounding} (0 = kept, 1 = lost); unchanged: share of the vector's entries that move no weight")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--upto", type=click.IntRange(0), default=None, help="Apply steps 1..UPTO only (0 = base).")
@click.option("--alpha", "alphas", multiple=True, metavar="T=VALUE", help="Re-weight step T (0 removes it).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Weights' dtype on disk. float32 is exact; a half dtype rounds, and says how much survived.")
@click.option("--overwrite", is_flag=True)
def compose(run_dir, out_dir, upto, alphas, dtype, overwrite):
    """Write base + sum of alpha_t * v_t as a standard Hugging Face model directory."""
    from ssu.recipes.compose import compose_to_dir

    applied, rounding = compose_to_dir(run_dir, out_dir, upto=upto, alphas=_parse_alphas(alphas),
                                       overwrite=overwrite, dtype=dtype)
    click.echo(f"composed base + steps {applied or '(none)'} -> {out_dir} ({dtype})")
    for s, r in rounding.items():
        click.echo(f"  step {s}: {dtype} keeps the vector with relative error {r['rel_error']:.4f}; "
                   f"{r['unchanged']:.1%} of its entries move no weight")


# The component packages `ssu list` imports so their registries are filled.
KINDS = {"methods": "ssu.methods", "presets": "ssu.presets", "regularizers": "ssu.regularizers",
         "metrics": "ssu.metrics", "eval-sets": "ssu.eval.sets", "model-metrics": "ssu.eval.model_metrics"}


def _list_kind(kind: str) -> None:
    import importlib

    from ssu.registry import kinds, unknown_message

    for module in KINDS.values():
        importlib.import_module(module)
    registries = kinds()
    if kind not in registries:
        raise SSUError(unknown_message("kind of component", kind, sorted(registries)))
    for name, text, params in registries[kind].describe():
        click.echo(f"{name:<22} {text}")
        if params:
            click.echo(" " * 23 + "args: " + ", ".join(f"{p}={v!r}" for p, v in params))


@main.command("list")
@click.argument("kind", required=False)
def list_cmd(kind):
    """List the registered components of KIND (methods, presets, regularizers, metrics, eval-sets,
    model-metrics, ...) with their parameters; without KIND, the kinds."""
    from ssu.registry import kinds

    if kind is None:
        import importlib

        for module in KINDS.values():
            importlib.import_module(module)
        for plural, registry in kinds().items():
            click.echo(f"{plural:<16} {len(registry)} {registry.kind}(s)")
        return
    _list_kind(kind)


def _alias(name: str, kind: str) -> None:
    @main.command(name, hidden=True, help=f"Same as `ssu list {kind}`.")
    def _cmd():
        _list_kind(kind)


for _name, _kind in (("methods", "methods"), ("regularizers", "regularizers"), ("eval-sets", "eval-sets"),
                     ("model-metrics", "model-metrics")):
    _alias(_name, _kind)


# --- evaluation and reporting -------------------------------------------------------


@main.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("t", type=click.IntRange(0))
@click.option("--metric", "metrics", multiple=True, help="Metric to compute (default: the run's list).")
@click.option("--lm-eval", "lm_eval", default=None, metavar="TASKS",
              help="lm-eval tasks to score, comma-separated (besides eval.lm_eval_tasks), e.g. mmlu.")
@click.option("--lm-eval-include", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory of extra lm-eval task YAML files.")
def eval_cmd(run_dir, t, metrics, lm_eval, lm_eval_include):
    """Evaluate the model after step T (0 = the memorized base): memorization, utility, privacy."""
    from ssu.recipes.evaluate import evaluate_step

    tasks = [x.strip() for x in lm_eval.split(",") if x.strip()] if lm_eval else None
    if lm_eval is not None and not tasks:
        raise SSUError("--lm-eval needs task names, e.g. --lm-eval mmlu,arc_easy")
    rows = evaluate_step(run_dir, t, metrics=list(metrics) or None, lm_eval_tasks=tasks,
                         lm_eval_include=lm_eval_include)
    click.echo(f"step {t}: {len(rows)} new result rows" if rows else f"step {t}: all results already computed")
    for r in rows:
        if r["metric"].startswith("lm_eval:"):
            err = "" if r.get("stderr") is None else f" ± {r['stderr']:.4f}"
            click.echo(f"  {r['metric']}: {r['value']:.4f}{err} (n {r['n']})")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--metric", default="rougeL_f", show_default=True)
@click.option("--no-plots", is_flag=True)
def report(run_dir, metric, no_plots):
    """Print the book x step matrix and utility per step; write PNG plots to RUN_DIR/plots."""
    from ssu.recipes.report import format_matrix, write_plots

    click.echo(format_matrix(run_dir, metric))
    if not no_plots:
        for p in write_plots(run_dir, metric):
            click.echo(f"wrote {p}")


@main.command()
@click.option("--out", "out_dir", default="ssu-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--books", default=6, show_default=True, type=click.IntRange(2))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out_dir, books, steps, seed):
    """Synthetic corpus -> tiny model -> memorized target -> SSU steps with evaluation (CPU, minutes)."""
    from ssu.demo import run_demo

    if steps > books:
        raise SSUError(f"--steps {steps} needs at least as many books (got --books {books})")
    run_demo(out_dir, books=books, steps=steps, seed=seed)


# --- comparison with baselines -----------------------------------------------------


@main.command()
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False))
def compare(config_file):
    """Run several methods on the same data, model, schedule and seed; write OUT/comparison.md + plots."""
    from ssu.compare.runner import format_table, load_compare_config, run_comparison

    cc = load_compare_config(config_file)
    summary = run_comparison(cc, log=click.echo)
    click.echo(format_table(summary))
    click.echo(f"wrote {cc.out / 'comparison.md'}, {cc.out / 'comparison.json'}, "
               + ", ".join(summary["plots"]))


@main.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.argument("prepared_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--step", "t", required=True, type=click.IntRange(1), help="Leave out the books of steps 1..T.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Evaluation config key, e.g. eval.max_windows=4 (use the compared runs' seed/eval).")
def retrain(model, prepared_dir, out_dir, t, sets):
    """Re-memorize MODEL's recipe without the books removed at steps <= T, and evaluate it (the reference)."""
    from ssu.compare.runner import summarize_results
    from ssu.config import parse_set
    from ssu.recipes.retrain import retrain as run

    out = run(model, prepared_dir, out_dir, t, sets=parse_set(list(sets)))
    s = summarize_results(out["results"], t)
    fmt = {k: "—" if v is None else f"{v:.2f}" if k == "heldout_ppl" else f"{v:.3f}" for k, v in s.items()}
    click.echo(f"retrained without {', '.join(out['excluded_books'])} in {out['seconds']:.0f}s: ROUGE-L forget "
               f"{fmt['forget']}, earlier {fmt['earlier']}, retained {fmt['retained']}; "
               f"held-out ppl {fmt['heldout_ppl']} -> {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    main()
