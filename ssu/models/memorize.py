"""Build the memorized target that unlearning starts from.

The reference protocol fine-tunes a model on every book of the schedule (plus the
retain books, which must stay memorized) until it reproduces them; unlearning then
removes the books one time step at a time. ``memorize`` does that for any causal LM,
tracking greedy-continuation ROUGE-L per book and stopping once every book reaches
``target_rouge`` (or after ``epochs``).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data_prep.fsutil import atomic_dir, atomic_write_json
from ssu.engine.encoding import collate, encode_pair
from ssu.engine.seeding import seed_everything
from ssu.errors import SSUError
from ssu.eval.generation import generate_continuations
from ssu.models.loading import SSU_MODEL_CARD, load_model, load_tokenizer, model_card

DEFAULT_LR = 2e-5  # for pre-trained models; tiny models carry their own recommendation


@dataclass
class MemorizeConfig:
    epochs: int = 100
    lr: float | None = None
    batch_size: int = 8
    target_rouge: float = 0.9
    eval_every: int = 5
    eval_windows: int | None = None  # per book; None = every window
    max_length: int = 512
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False


def memorization_windows(prepared_dir: str | Path, roles=("forget", "retain")) -> list[dict]:
    from data_prep import load_windows

    return [w for w in load_windows(prepared_dir).to_list() if w["role"] in roles]


def rouge_by_book(model, tokenizer, windows: list[dict], max_length: int = 512) -> dict[str, float]:
    """Mean greedy-continuation ROUGE-L F1 per book."""
    from ssu.metrics import get_metric

    rouge = get_metric("rougeL_f").fn
    outputs = generate_continuations(model, tokenizer, windows, max_length=max_length)
    scores: dict[str, list[float]] = {}
    for w, out in zip(windows, outputs):
        scores.setdefault(w["book"], []).append(rouge(out, w["continuation"]))
    return {b: float(np.mean(v)) for b, v in scores.items()}


def _eval_sample(windows: list[dict], per_book: int | None, seed: int) -> list[dict]:
    if per_book is None:
        return windows
    rng = random.Random(seed)
    by_book: dict[str, list[dict]] = {}
    for w in windows:
        by_book.setdefault(w["book"], []).append(w)
    return [w for ws in by_book.values() for w in rng.sample(ws, min(per_book, len(ws)))]


def memorize(model_path: str, prepared_dir: str | Path, out_dir: str | Path,
             cfg: MemorizeConfig, overwrite: bool = False, progress: bool = True,
             exclude_books: tuple[str, ...] | list[str] = ()) -> dict:
    """Fine-tune ``model_path`` on all scheduled and retain books; save an HF directory.

    ``exclude_books`` leaves books out (``ssu retrain``: the reference that never saw them).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise SSUError(f"{out_dir} already exists (use --overwrite to replace it)")
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    model = load_model(model_path, cfg.device, cfg.dtype, cfg.trust_remote_code)
    lr = cfg.lr if cfg.lr is not None else model_card(model_path).get("recommended_lr", DEFAULT_LR)
    windows = [w for w in memorization_windows(prepared_dir) if w["book"] not in set(exclude_books)]
    if not windows and not exclude_books:
        raise SSUError(f"{prepared_dir} has no forget or retain windows to memorize")
    # With every book excluded (a retrain reference after the last step of a layout
    # without retain books) there is nothing to learn: the reference is the source
    # model itself, saved unchanged.
    encoded = [encode_pair(tokenizer, w["prompt"], w["continuation"], cfg.max_length) for w in windows]
    eval_windows = _eval_sample(windows, cfg.eval_windows, cfg.seed)

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n_batches = (len(encoded) + cfg.batch_size - 1) // cfg.batch_size
    warmup = min(10, n_batches * cfg.epochs // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    rng = random.Random(cfg.seed)
    history, start = [], time.perf_counter()
    reached, epoch, loss_val = False, 0, float("nan")
    bar = tqdm(range(1, cfg.epochs + 1 if windows else 1), desc="memorize", disable=not progress)
    for epoch in bar:
        model.train()
        order = list(range(len(encoded)))
        rng.shuffle(order)
        losses = []
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            batch = collate([encoded[i].ids for i in idx], [0] * len(idx), tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise SSUError(f"loss became {loss.item()} at epoch {epoch}; lower --lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            sched.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        loss_val = float(np.mean(losses))
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            scores = rouge_by_book(model, tokenizer, eval_windows, cfg.max_length)
            history.append({"epoch": epoch, "loss": loss_val, "rougeL": scores,
                            "seconds": round(time.perf_counter() - start, 2)})
            bar.set_postfix(loss=f"{loss_val:.3f}", min_rougeL=f"{min(scores.values()):.3f}")
            if min(scores.values()) >= cfg.target_rouge:
                reached = True
                break
        else:
            bar.set_postfix(loss=f"{loss_val:.3f}")
    bar.close()

    record = {
        "source_model": str(model_path),
        "prepared_dir": str(Path(prepared_dir).resolve()),
        "config": {**asdict(cfg), "lr": lr},
        "epochs_run": epoch,
        "final_loss": loss_val,
        "target_reached": reached,
        "rougeL_by_book": history[-1]["rougeL"] if history else {},
        "history": history,
        "seconds": round(time.perf_counter() - start, 2),
        "n_windows": len(windows),
        "excluded_books": sorted(exclude_books),
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = Path(model_path) / SSU_MODEL_CARD
        if card.is_file():
            shutil.copyfile(card, tmp / SSU_MODEL_CARD)
        atomic_write_json(tmp / "memorize.json", record)
    return record


def load_record(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "memorize.json"
    return json.loads(path.read_text()) if path.is_file() else {}
