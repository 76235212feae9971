"""Commands on a run directory: ``init``, ``step``, ``stack``, ``compose``, ``eval``, ``report``, ``audit``."""

from __future__ import annotations

import click

from ssu.cli.group import main
from ssu.errors import SSUError


def _parse_alphas(items, option: str = "--alpha") -> dict[int, float]:
    out = {}
    for item in items:
        step, _, value = item.partition("=")
        try:
            out[int(step)] = float(value)
        except ValueError:
            raise SSUError(f"{option} expects STEP=VALUE, got {item!r}") from None
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
@click.option("--request-id", default=None, help="The takedown request this step serves (kept in the audit log).")
@click.option("--note", default=None, help="A note on the request (kept in the audit log).")
def step(run_dir, t, force, no_eval, request_id, note):
    """Perform time step T: unlearn the book(s) the schedule removes at T."""
    from ssu.recipes.step import run_step

    entry = run_step(run_dir, t, force=force, request_id=request_id, note=note)
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
@click.option("--reweight", "reweights", multiple=True, metavar="T=ALPHA",
              help="Set step T's alpha in the stack from now on (0 undoes the step); recorded in the audit log, "
                   "evaluation rows of steps >= T dropped.")
@click.option("--note", default=None, help="Why (kept in the audit log with --reweight).")
def stack(run_dir, rounding, reweights, note):
    """List the stack of vectors: step, books, alpha, norm, density, bytes."""
    from ssu.models.loading import DTYPES, resolve_device, resolve_dtype
    from ssu.recipes.compose import composed_float32, reweight, stack_of
    from ssu.recipes.run_dir import RunDir

    for t, alpha in _parse_alphas(reweights, "--reweight").items():
        ev = reweight(run_dir, t, alpha, note)
        click.echo(f"step {t}: alpha {ev['previous_alpha']:g} -> {ev['alpha']:g} (log record {ev['seq']}); "
                   f"re-run `ssu eval` for steps >= {t}")
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


@main.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("t", type=click.IntRange(0))
@click.option("--metric", "metrics", multiple=True, help="Metric to compute (default: the run's list).")
@click.option("--lm-eval", "lm_eval", default=None, metavar="TASKS",
              help="lm-eval tasks to score, comma-separated (besides eval.lm_eval_tasks), e.g. mmlu.")
@click.option("--lm-eval-include", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory of extra lm-eval task YAML files.")
@click.option("--probe", default=None, metavar="NAMES",
              help="Probes to run besides eval.probes, comma-separated: shifted, sampled, quantized, rounded, "
                   "relearn (`ssu list probes`).")
def eval_cmd(run_dir, t, metrics, lm_eval, lm_eval_include, probe):
    """Evaluate the model after step T (0 = the memorized base): memorization, utility, privacy."""
    from ssu.recipes.evaluate import evaluate_step

    tasks = [x.strip() for x in lm_eval.split(",") if x.strip()] if lm_eval else None
    if lm_eval is not None and not tasks:
        raise SSUError("--lm-eval needs task names, e.g. --lm-eval mmlu,arc_easy")
    probes = [x.strip() for x in probe.split(",") if x.strip()] if probe else None
    if probe is not None and not probes:
        raise SSUError("--probe needs probe names, e.g. --probe shifted,sampled (see `ssu list probes`)")
    rows = evaluate_step(run_dir, t, metrics=list(metrics) or None, lm_eval_tasks=tasks,
                         lm_eval_include=lm_eval_include, probes=probes)
    click.echo(f"step {t}: {len(rows)} new result rows" if rows else f"step {t}: all results already computed")
    for r in rows:
        if r["metric"].startswith("probe:"):
            click.echo(f"  {r['metric']:<26} {r['set']:<16} {r['book']:<20} {r['value']:.3f} "
                       f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n {r['n']})")
        elif r["metric"].startswith("lm_eval:"):
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
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True, help="Re-hash every artifact; fail in one line naming what changed.")
def audit(run_dir, verify):
    """The takedown log: per request what was removed, from which model, by which change, with what
    evidence; writes RUN_DIR/audit.json and RUN_DIR/audit.md."""
    from ssu.recipes.audit import verify as verify_run
    from ssu.recipes.audit import write_audit

    if verify:
        checked = verify_run(run_dir)
        click.echo(f"verified {run_dir}: {checked['log_records']} log records, {checked['vectors']} vectors, "
                   f"{checked['books']} removed books' data, {checked['base_model_files']} base model files "
                   "unchanged")
        return
    json_path, md_path, record = write_audit(run_dir)
    for r in record["requests"]:
        req = (r["request"] or {}).get("id", "(no id)")
        parts = []
        for b in r["books"]:
            m = r["memorization"][b]
            parts.append(f"{b} {_value(m['before'])} -> {_value(m['after'])} (worst {_value(m['after_worst_case'])})")
        click.echo(f"step {r['step']} [{req}] {r['utc'] or ''}: {'; '.join(parts)}; alpha {r['alpha_now']:g}")
    click.echo(f"wrote {json_path} and {md_path}")


def _value(v: dict | None) -> str:
    return "-" if v is None else f"{v['value']:.2f}"
