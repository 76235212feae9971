"""Commands that make the data and the models: ``synth``, ``prepare``, ``tiny-model``, ``memorize``."""

from __future__ import annotations

import click

from ssu.cli.group import main


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
