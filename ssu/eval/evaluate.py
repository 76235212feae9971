"""``ssu eval``: memorization, utility and privacy after a time step.

After step T the model is scored on four kinds of text, each book separately:
``removed-now`` (the book(s) of step T), ``removed-earlier`` (every book of a step
< T: must stay forgotten), ``retain`` / ``future`` (retain books and books not yet
removed: must stay memorized) and ``heldout`` (never trained: utility). Greedy
continuations of each window's prompt -- the prompt alone, never the reference --
are saved to ``step_T/generations.jsonl``; every metric is then computed from that
file, so metrics can be added or recomputed without regenerating. One row per
(step, book, set, metric) goes to ``results.jsonl``, with its n and a bootstrap 95%
confidence interval. Step 0 is the base (memorized) model.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from data_prep.fsutil import atomic_write_jsonl, read_jsonl
from ssu.engine.encoding import collate, encode_pair
from ssu.engine.losses import token_nll
from ssu.errors import SSUError
from ssu.eval.generation import generate_continuations
from ssu.metrics import aggregate, get_metric, loss_score, mia_auc, min_k_score, zlib_score
from ssu.run import RESULTS, RunDir

GENERATIONS = "generations.jsonl"
REMOVED = ("removed-now", "removed-earlier")


def evaluation_windows(run: RunDir, step: int) -> list[dict]:
    """Windows to score after ``step``, each tagged with its evaluation set."""
    from data_prep import load_schedule, load_windows

    cfg = run.config
    schedule = load_schedule(cfg.data)
    step_of = {b: s for s, books in schedule["steps"].items() for b in books}
    rows = load_windows(cfg.data).to_list()
    by_book: dict[str, list[dict]] = {}
    for w in rows:
        if w["role"] == "forget":
            s = step_of[w["book"]]
            tag = "removed-now" if s == step else "removed-earlier" if s < step else "future"
        else:
            tag = w["role"]
        by_book.setdefault(w["book"], []).append({**w, "set": tag})
    rng = random.Random(cfg.seed)
    out = []
    for ws in by_book.values():
        if cfg.eval.max_windows and len(ws) > cfg.eval.max_windows:
            keep = sorted(rng.sample(range(len(ws)), cfg.eval.max_windows))
            ws = [ws[i] for i in keep]
        out.extend(ws)
    return out


@torch.no_grad()
def token_logprobs(model, tokenizer, windows: list[dict], max_length: int, batch_size: int = 16):
    """Per-window log-probabilities of every token after the first (prompt + continuation)."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(windows), batch_size):
        enc = [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows[b : b + batch_size]]
        batch = collate([e.ids for e in enc], [0] * len(enc), tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        nll, mask = token_nll(logits, batch["labels"].to(device))
        for i in range(len(enc)):
            out.append((-nll[i][mask[i]]).cpu().numpy())
    return out


def _load_model_for(run: RunDir, step: int, base_only: bool = False):
    from ssu.vectors.compose import load_composed

    if base_only:
        return load_composed(run, upto=0)

    if step != 0 and step not in run.completed_steps():
        raise SSUError(f"step {step} is not complete in {run.path}; run `ssu step {run.path} {step}` first")
    return load_composed(run, upto=step)


def evaluate_step(run_dir: str | Path, step: int, progress: bool = True,
                  metrics: list[str] | None = None, base_only: bool = False) -> list[dict]:
    """Evaluate the model after ``step``; return the new results rows.

    ``base_only``: score the run's base model itself as the state after ``step``, with
    no stack applied -- for a reference such as a model retrained without those books.
    """
    from ssu.models.loading import load_tokenizer

    run = RunDir(run_dir)
    cfg = run.config
    names = metrics or cfg.eval.metrics
    metric_objs = {n: get_metric(n) for n in names}  # fails early on an unknown name
    step_dir = run.step_dir(step)
    gen_path = step_dir / GENERATIONS
    results_path = run.path / RESULTS
    results = read_jsonl(results_path)
    have = {(r["step"], r["book"], r["metric"]) for r in results}
    windows = evaluation_windows(run, step)
    books = sorted({w["book"] for w in windows})
    todo_text = [n for n in names if any((step, b, n) not in have for b in books)]
    todo_model = any((step, b, "perplexity") not in have for b in books) or \
        (_mia_possible(windows) and (step, "*", "mia_auc_loss") not in have)
    if not todo_text and not todo_model:
        return []

    model = tokenizer = None
    generations = read_jsonl(gen_path)
    if not generations or todo_model:
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        model = _load_model_for(run, step, base_only)
    if not generations:
        outputs = generate_continuations(model, tokenizer, windows, batch_size=cfg.eval.batch_size,
                                         max_length=cfg.train.max_length, progress=progress)
        generations = [{"book": w["book"], "set": w["set"], "window": w["window"], "prompt": w["prompt"],
                        "reference": w["continuation"], "output": o} for w, o in zip(windows, outputs)]
        step_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(gen_path, generations)

    new: list[dict] = []
    by_book: dict[str, list[dict]] = {}
    for g in generations:
        by_book.setdefault(g["book"], []).append(g)
    for name in todo_text:
        m = metric_objs[name]
        for book, gs in sorted(by_book.items()):
            if (step, book, name) in have:
                continue
            values = [m.fn(g["output"], g["reference"]) for g in gs]
            new.append(_row(step, book, gs[0]["set"], name, values, cfg.seed))
    if todo_model:
        new.extend(_model_metrics(run, step, model, tokenizer, windows, have))
    atomic_write_jsonl(results_path, results + new)
    return new


def _mia_possible(windows: list[dict]) -> bool:
    sets = {w["set"] for w in windows}
    return bool(sets & set(REMOVED)) and "heldout" in sets


def _row(step, book, set_, metric, values, seed) -> dict:
    agg = aggregate(values, seed=seed)
    return {"step": step, "book": book, "set": set_, "metric": metric, "value": agg["value"],
            "ci_low": agg["ci_low"], "ci_high": agg["ci_high"], "n": agg["n"]}


def _exp(x: float) -> float:
    """exp that saturates: a wrecked model's mean NLL (> 709) is a perplexity of inf, not a crash."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _model_metrics(run, step, model, tokenizer, windows, have) -> list[dict]:
    """Perplexity per book, and membership-inference AUCs of removed vs held-out windows."""
    cfg = run.config
    logps = token_logprobs(model, tokenizer, windows, cfg.train.max_length)
    rows = []
    by_book: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        by_book.setdefault(w["book"], []).append(i)
    for book, idx in sorted(by_book.items()):
        if (step, book, "perplexity") in have:
            continue
        # exp of the mean per-window NLL, with the bootstrap CI taken on the NLL scale
        # (exp is monotone, so the interval maps over exactly).
        agg = aggregate([float(np.mean(-logps[i])) for i in idx], seed=cfg.seed)
        rows.append({"step": step, "book": book, "set": windows[idx[0]]["set"], "metric": "perplexity",
                     "value": _exp(agg["value"]), "ci_low": _exp(agg["ci_low"]),
                     "ci_high": _exp(agg["ci_high"]), "n": len(idx)})
    members = [i for i, w in enumerate(windows) if w["set"] in REMOVED]
    heldout = [i for i, w in enumerate(windows) if w["set"] == "heldout"]
    if members and heldout and (step, "*", "mia_auc_loss") not in have:
        def text(i: int) -> str:
            return windows[i]["prompt"] + " " + windows[i]["continuation"]

        scorers = {
            "mia_auc_loss": lambda i: loss_score(logps[i]),
            "mia_auc_zlib": lambda i: zlib_score(logps[i], text(i)),
            "mia_auc_mink": lambda i: min_k_score(logps[i], 0.4),
        }
        for name, score in scorers.items():
            auc = mia_auc([score(i) for i in members], [score(i) for i in heldout])
            rows.append({"step": step, "book": "*", "set": "removed-vs-heldout", "metric": name,
                         "value": float(auc), "ci_low": None, "ci_high": None, "n": len(members) + len(heldout)})
    return rows


def load_results(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / RESULTS)
