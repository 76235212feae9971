"""Commands that compare: ``demo`` (ssu vs ssu-stable), ``compare`` (methods side by side), ``retrain``."""

from __future__ import annotations

import click

from ssu.cli.group import main
from ssu.errors import SSUError


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


@main.command()
@click.option("--out", "out_dir", default="ssu-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--books", default=6, show_default=True, type=click.IntRange(2))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out_dir, books, steps, seed):
    """Synthetic corpus -> tiny model -> memorized target -> ssu and ssu-stable side by side (CPU, ~1 min)."""
    from ssu.demo import run_demo

    if steps > books:
        raise SSUError(f"--steps {steps} needs at least as many books (got --books {books})")
    run_demo(out_dir, books=books, steps=steps, seed=seed)
