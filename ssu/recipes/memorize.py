"""Build the memorized target that unlearning starts from.

The reference protocol fine-tunes a model on every book of the schedule (plus the
retain books, which must stay memorized) until it reproduces them; unlearning then
removes the books one time step at a time. ``memorize`` does that for any causal LM,
tracking greedy-continuation ROUGE-L per book and stopping once every book reaches
``target_rouge`` (or after ``epochs``). With ``generic_dir`` it mixes generic text into
every micro-batch (``data_prep/generic.py``), and it reports held-out perplexity before
and after, so the cost of memorizing to general ability is on record. Its settings are a
:class:`MemorizeConfig`, read like every config (:func:`ssu.config.load`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ssu.config import TrainSettings
from ssu.engine.encoding import Encoded, encode_pair
from ssu.engine.finetune import Hooks, finetune
from ssu.engine.forget_set import ForgetSet
from ssu.engine.losses import LEARN, RETAIN, forward_nll, group_mean_nll
from ssu.engine.seeding import seed_everything
from ssu.errors import SSUError
from ssu.eval.memorization import rouge_by_book
from ssu.io import atomic_dir, atomic_write_json
from ssu.methods.base import UnlearningMethod
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
    generic_dir: str | None = None  # plain text mixed in: one generic window per book window
    generic_pool: int = 4096  # generic windows sampled once; each epoch draws from them
    generic_weight: float = 1.0  # weight of the generic windows' NLL beside the books'
    heldout_windows: int = 64  # generic windows held out for perplexity

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.max_length < 8:
            raise SSUError("memorize: epochs, batch_size and eval_every must be >= 1, max_length >= 8")
        if (self.lr is not None and self.lr <= 0) or not 0 <= self.target_rouge <= 1:
            raise SSUError("memorize: lr must be > 0 and target_rouge in [0, 1]")
        if self.generic_pool < 1 or self.generic_weight < 0 or self.heldout_windows < 0:
            raise SSUError("memorize: generic_pool >= 1, generic_weight >= 0, heldout_windows >= 0")


def memorization_windows(prepared_dir: str | Path, roles=("forget", "retain")) -> list[dict]:
    from data_prep import read_window_rows

    return [w for w in read_window_rows(prepared_dir) if w["role"] in roles]


def _eval_sample(windows: list[dict], per_book: int | None, seed: int) -> list[dict]:
    if per_book is None:
        return windows
    rng = random.Random(seed)
    by_book: dict[str, list[dict]] = {}
    for w in windows:
        by_book.setdefault(w["book"], []).append(w)
    return [w for ws in by_book.values() for w in rng.sample(ws, min(per_book, len(ws)))]


class _Memorize(UnlearningMethod):
    """The memorization objective as a method for the training loop: token-mean NLL of the
    whole window (``n_prompt`` = 0), nothing masked, no random labels or reference. Generic
    text rides in the loop's retain slot: one generic window drawn per book window.
    Not registered: it is this recipe's, not a way to unlearn."""

    name = "memorize"

    def __init__(self, generic_weight: float | None = None):
        super().__init__()
        self.needs_retain = generic_weight is not None
        self.generic_weight = generic_weight

    def loss(self, model, batch, reference=None):
        nll, mask = forward_nll(model, batch)
        loss = group_mean_nll(nll, mask, batch, LEARN)
        if not self.needs_retain:
            return loss, {}
        generic = group_mean_nll(nll, mask, batch, RETAIN)
        return loss + self.generic_weight * generic, {"generic": generic.item()}


def heldout_perplexity(model, tokenizer, windows: list[dict], max_length: int) -> float | None:
    """exp of the mean per-window NLL (prompt + continuation), as ``ssu eval``'s perplexity."""
    if not windows:
        return None
    from ssu.eval.logprobs import token_logprobs

    nll = [float(-lp.mean()) for lp in token_logprobs(model, tokenizer, windows, max_length)]
    return float(np.exp(min(np.mean(nll), 700.0)))


def _heldout_sets(prepared_dir, generic) -> dict[str, list[dict]]:
    """Held-out text to measure perplexity on: the prepared heldout books, generic held-out windows."""
    from data_prep import read_window_rows

    sets = {"heldout_books": [w for w in read_window_rows(prepared_dir) if w["role"] == "heldout"]}
    if generic is not None:
        sets["generic"] = generic.heldout
    return {k: v for k, v in sets.items() if v}


def _warmup(steps: int):
    return lambda s: min(1.0, (s + 1) / steps)


def _epoch_loss(stats: dict, n_batches: int) -> float:
    """Mean loss of the last epoch's micro-batches."""
    return float(np.mean([x["loss"] for x in stats["losses"][-n_batches:]]))


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
    def full(w) -> Encoded:  # every token of the window is learned (n_prompt = 0)
        return Encoded(encode_pair(tokenizer, w["prompt"], w["continuation"], cfg.max_length).ids, 0)

    learn = [full(w) for w in windows]
    eval_windows = _eval_sample(windows, cfg.eval_windows, cfg.seed)
    generic = None
    if cfg.generic_dir is not None:
        from data_prep import load_generic, load_schedule

        sched = load_schedule(prepared_dir)
        generic = load_generic(cfg.generic_dir, sched["prompt_words"], sched["continuation_words"],
                               cfg.generic_pool, cfg.heldout_windows, cfg.seed)
    heldout = _heldout_sets(prepared_dir, generic)
    ppl_before = {k: heldout_perplexity(model, tokenizer, v, cfg.max_length) for k, v in heldout.items()}
    fs = ForgetSet(step=0, books=sorted({w["book"] for w in windows}), windows=windows, learn=learn,
                   retain=[full(w) for w in generic.train] if generic else [], pad_id=tokenizer.pad_token_id,
                   seed=cfg.seed)
    method = _Memorize(cfg.generic_weight if generic else None)
    n_batches = (len(learn) + cfg.batch_size - 1) // cfg.batch_size
    warmup = min(10, n_batches * cfg.epochs // 10 + 1)
    history, start = [], time.perf_counter()
    bar = tqdm(total=cfg.epochs, desc="memorize", disable=not progress)

    def after_epoch(epoch: int, stats: dict) -> bool:
        """Evaluate every ``eval_every`` epochs; stop once every book is reproduced."""
        bar.update(1)
        loss = _epoch_loss(stats, n_batches)
        bar.set_postfix(loss=f"{loss:.3f}")
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            return False
        scores = rouge_by_book(model, tokenizer, eval_windows, cfg.max_length)
        history.append({"epoch": epoch, "loss": loss, "rougeL": scores,
                        "seconds": round(time.perf_counter() - start, 2)})
        bar.set_postfix(loss=f"{loss:.3f}", min_rougeL=f"{min(scores.values()):.3f}")
        return min(scores.values()) >= cfg.target_rouge

    stats: dict = {"losses": []}
    if windows:
        try:
            # The one training loop (ssu/engine/finetune.py): accumulation, clipping and the
            # finite checks are those of every unlearning step; warm-up instead of decay.
            train = TrainSettings(lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, grad_accum=1,
                                  max_grad_norm=1.0, share_prompts=False, windows_per_backward=None,
                                  max_length=cfg.max_length, finetune="full")
            result = finetune(model, method, fs, train, Hooks(on_epoch=after_epoch),
                              schedule=lambda _: _warmup(warmup))
        except SSUError as e:  # the loop's hint names the run config's key; here it is the option
            raise SSUError(str(e).replace("train.lr", "--lr")) from None
        finally:
            bar.close()
        model, stats = result.model, result.stats()
    reached = bool(history) and min(history[-1]["rougeL"].values()) >= cfg.target_rouge
    epoch = history[-1]["epoch"] if history else 0
    loss_val = _epoch_loss(stats, n_batches) if stats["losses"] else float("nan")
    ppl_after = {k: heldout_perplexity(model, tokenizer, v, cfg.max_length) for k, v in heldout.items()}

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
        "heldout_perplexity": {k: {"before": ppl_before[k], "after": ppl_after[k], "windows": len(heldout[k])}
                               for k in heldout},
        "generic": None if generic is None else {"dir": str(Path(cfg.generic_dir).resolve()),
                                                 "files": generic.files, "pool": len(generic.train),
                                                 "heldout": len(generic.heldout)},
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
