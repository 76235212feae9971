"""``relearn``: a few optimizer steps on a slice of the removed book, then the rest of it.

A book that is truly gone has to be learned again from what the attacker holds; a
book that is only hidden comes back after a handful of steps on a little of it (Hu et
al., ICLR 2025; Łucki et al. 2024). Per removed book (sets with goal ``forget``), a
seeded ``fraction`` of its probed windows is the attacker's slice; the model is
fine-tuned on every book's slice together for ``steps`` AdamW steps (the learning loss
on continuation tokens), then each window *not* in a slice is continued greedily.
With ``data`` (a JSON lines file of ``prompt``/``continuation`` windows) it learns that
related text instead and every window is measured. Held-out windows are measured too:
their rise is what relearning does to text the model never saw.

Read beside the retrain reference (a model that never saw the book, probed the same
way), the difference is the *relearning gap*; ``ssu compare`` reports it. The value is
the relearned model's ROUGE-L (``probe:relearn``); it is not part of the worst case,
which is about the model as released.

An attacker picks the learning rate that brings the book back. One rate does not fit
every model: 6 AdamW steps at 1e-3 relearn the demo world's books, and in the
pretrained world (a 3.9M Llama) the same steps took a book from ROUGE-L 0.73 to 0.13.
So by default the probe fine-tunes a fresh model at each rate of a grid (``lrs``, default
3e-5, 1e-4, 3e-4 and 1e-3: each was the attacker's best somewhere in experiments/deep --
1e-3 on most demo-world steps, 3e-5 to 3e-4 on Gutenberg and the pretrained world) and
reports, for every window, the scores of the rate whose removed windows came back furthest
(their mean); the detail keeps that rate and every rate's mean. ``lr`` alone (no ``lrs``)
probes that one rate: a quarter of the cost, and a lower bound on what an attacker gets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ssu.errors import SSUError
from ssu.eval.probes import PROBES, Probe, ProbeContext, Score, greedy_scores

GRID = (3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3)  # the attacker's learning rates when neither lr nor lrs is given


def attacker_slice(windows: list[dict], fraction: float, seed: int) -> set[tuple[str, str, int]]:
    """(set, book, window) of the windows each removed book lends the attacker: a seeded
    ``fraction`` of its windows (at least one), none of a book with a single window."""
    by_book: dict[tuple[str, str], list[dict]] = {}
    for w in windows:
        if w.get("goal") == "forget":
            by_book.setdefault((w["set"], w["book"]), []).append(w)
    chosen = set()
    for (set_, book), ws in sorted(by_book.items()):
        if len(ws) < 2:
            continue
        k = min(len(ws) - 1, max(1, math.ceil(fraction * len(ws))))
        for w in random.Random(f"{seed}:{book}").sample(ws, k):
            chosen.add((set_, book, w["window"]))
    return chosen


def _read_windows(path: str) -> list[dict]:
    import json

    p = Path(path)
    if not p.is_file():
        raise SSUError(f"relearn.data: {path} does not exist")
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or not all(isinstance(r, dict) and "prompt" in r and "continuation" in r for r in rows):
        raise SSUError(f"relearn.data: {path} needs JSON lines with prompt and continuation")
    return rows


def relearn(model, tokenizer, windows: list[dict], *, steps: int, lr: float, batch_size: int, max_length: int,
            seed: int) -> list[float]:
    """Fine-tune ``model`` in place on ``windows`` (continuation tokens) for ``steps`` steps; the losses."""
    import torch.nn.functional as F

    from ssu.engine.encoding import IGNORE_INDEX, collate, encode_pair

    encoded = [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows]
    rng = random.Random(seed)
    params = list(model.parameters())
    model.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    losses, order = [], []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch, order = order[:batch_size], order[batch_size:]
        b = collate([encoded[i].ids for i in batch], [encoded[i].n_prompt for i in batch], tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        labels = b["labels"].to(device)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 6))
    model.eval()
    model.requires_grad_(False)
    return losses


@PROBES.register("relearn", outputs={"probe:relearn": False}, needs_fresh_model=True,
                 description="a few steps of fine-tuning on a slice of the removed book, then the rest of it")
class Relearn(Probe):
    @dataclass
    class Args:
        fraction: float = 0.25  # of each removed book's probed windows given to the attacker
        steps: int = 10
        lr: float | None = None  # one rate alone (without lrs)
        batch_size: int = 4
        data: str | None = None  # JSON lines of related windows to learn instead of the slice
        lrs: list[float] | None = None  # the attacker's grid (default GRID unless lr is given): the rate that
        # relearns most; given, it takes the place of lr

        def __post_init__(self) -> None:
            if self.lrs is not None and not self.lrs:
                raise SSUError("relearn: lrs needs at least one rate")
            if not 0 < self.fraction < 1 or self.steps < 1 or min(self.rates()) <= 0 or self.batch_size < 1 \
                    or (self.lr is not None and self.lr <= 0):
                raise SSUError("relearn: fraction in (0, 1), steps >= 1, lr(s) > 0, batch_size >= 1")

        def rates(self) -> list[float]:
            """The learning rates tried: ``lrs``, else ``lr`` alone, else :data:`GRID`."""
            return list(self.lrs or ([self.lr] if self.lr is not None else GRID))

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        a = self.args
        if a.data:
            train, measured = _read_windows(a.data), ctx.windows
        else:
            taken = attacker_slice(ctx.windows, a.fraction, ctx.seed)
            train = [w for w in ctx.windows if (w["set"], w["book"], w["window"]) in taken]
            measured = [w for w in ctx.windows if (w["set"], w["book"], w["window"]) not in taken]
        if not train:
            return []  # nothing removed to relearn from (step with no forget window probed)
        sub = ProbeContext(ctx.config, ctx.step, measured, ctx.seed, ctx.progress, ctx.load)
        rates = a.rates()
        if len(rates) > 1 and ctx.load is None:
            raise SSUError("relearn: a grid of rates needs a fresh model per rate (the recipe's ProbeContext.load); "
                           "give one lr")
        by_rate: dict[float, list[Score]] = {}
        for i, lr in enumerate(rates):
            m = model if i == 0 else ctx.load()
            losses = relearn(m, tokenizer, train, steps=a.steps, lr=lr, batch_size=a.batch_size,
                             max_length=ctx.config.train.max_length, seed=ctx.seed)
            by_rate[lr] = greedy_scores(m, tokenizer, sub, "probe:relearn",
                                        {"relearned_windows": len(train), "final_loss": losses[-1], "lr": lr})
            del m
        means = {lr: _forget_mean(scores, measured) for lr, scores in by_rate.items()}
        best = max(rates, key=means.__getitem__)  # ties: the first rate listed
        if len(rates) == 1:
            return by_rate[best]
        grid = {f"{lr:g}": round(v, 6) for lr, v in means.items()}
        return [Score(s.metric, s.set, s.book, s.window, s.value, {**s.detail, "by_lr": grid})
                for s in by_rate[best]]


def _forget_mean(scores: list[Score], windows: list[dict]) -> float:
    """Mean score over the windows of removed books (goal ``forget``): what the attacker is after."""
    forget = {(w["set"], w["book"], w["window"]) for w in windows if w.get("goal") == "forget"}
    values = [s.value for s in scores if (s.set, s.book, s.window) in forget]
    return sum(values) / len(values) if values else 0.0
