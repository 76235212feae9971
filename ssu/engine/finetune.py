"""The fine-tune of one time step: batches, accumulation, saliency mask, optimizer.

``finetune(model, method, forget_set, train_cfg, hooks) -> FinetuneResult``.
One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` forget windows.
A micro-batch holds each window's learning pair, its K random-label pairs (if the
method uses them) and as many retain pairs (if it needs them). It is forwarded and
back-propagated in chunks of ``windows_per_backward`` windows, each chunk one padded
tensor and one backward (``train.windows_per_backward``; None is the whole
micro-batch): the gradient is the same for any chunk size, only the
activation memory held at once changes. With ``share_prompts``, each distinct
prompt is forwarded once and its rows reuse its key/value cache (``ssu/engine/prefix.py``).
After accumulation the saliency mask multiplies the gradient
in place (m * g) and only then does AdamW step. Weight decay is off so a weight
whose gradient is always masked stays bit-identical (Adam's update for an all-zero
gradient history is exactly zero). Under ``accelerate launch`` each process runs
its share of a group's windows, DDP or FSDP reduces the gradients in the group's last
backward, and only then is the mask taken (``ssu/engine/distributed.py``).

Memory: the run must fit 7-8B models, so beyond the weights, their gradients and
AdamW's two moments nothing full-size is kept or built at once: the saliency mask
and the finiteness check work chunk by chunk, and AdamW runs its per-tensor loop
(see :func:`finetune`).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ssu.config import TrainSettings
from ssu.engine.distributed import Processes
from ssu.engine.forget_set import ForgetSet
from ssu.engine.losses import LEARN, RANDOM, RETAIN, Row, group_totals, make_batch
from ssu.engine.saliency import SaliencyMasker, chunk_views, local
from ssu.errors import SSUError

StepHook = Callable[[int], None]  # after every optimizer step, with its index
EpochHook = Callable[[int, dict], bool]  # after every epoch (from 1) with the statistics so far


def micro_batches(fs: ForgetSet, method, batch_size: int, rng: random.Random):
    """Yield one list per micro-batch for one epoch: per forget window, its
    ``(encoded, group)`` rows (learning row, the method's own rows, K random-label rows, a
    retain row)."""
    order = list(range(len(fs.learn)))
    rng.shuffle(order)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        windows: list[list[Row]] = [[(fs.learn[i], LEARN), *method.rows(i)] for i in idx]
        if method.uses_random_labels:
            for rows, i in zip(windows, idx):
                rows += [(e, RANDOM) for e in fs.random[i]]
        if method.needs_retain:
            for rows in windows:
                rows.append((fs.retain[rng.randrange(len(fs.retain))], RETAIN))
        yield windows


def chunked(windows: list[list[Row]], per_chunk: int, tokens: int | None = None) -> list[list[Row]]:
    """The micro-batch's rows in chunks (one forward + backward each): ``per_chunk`` windows,
    or with ``tokens``, as many consecutive windows as fit that many padded tokens (rows x
    longest row; at least one window per chunk)."""
    if tokens is None:
        return [[r for w in windows[c : c + per_chunk] for r in w] for c in range(0, len(windows), per_chunk)]
    out: list[list[Row]] = []
    for w in windows:
        if out:
            rows = out[-1] + w
            if len(rows) * max(len(e.ids) for e, _ in rows) <= tokens:
                out[-1] = rows
                continue
        out.append(list(w))
    return out


def shares(group: list[list[list[Row]]], rank: int, world: int, per_chunk: int, tokens: int | None = None):
    """This process's chunks of one optimizer step: ``(micro-batch index, rows, its totals)``.

    Windows are dealt to processes round-robin over the whole group (window j to
    process j mod world), so every process has work while the group has at least
    ``world`` windows. A chunk never mixes micro-batches: each is normalized by its own
    micro-batch's totals. One process gets exactly :func:`chunked` of every micro-batch.
    """
    out, j = [], 0
    for m, windows in enumerate(group):
        norm = group_totals([r for w in windows for r in w])
        mine = [w for i, w in enumerate(windows, start=j) if i % world == rank]
        j += len(windows)
        out += [(m, rows, norm) for rows in chunked(mine, per_chunk, tokens)]
    return out


def _backward(model, method, rows: list[Row], norm, pad_id: int, share_prompts: bool, device,
              scale: float, reference, step: int) -> tuple[dict[str, float], int]:
    """Loss and backward of one chunk of a micro-batch; returns its loss parts and tokens.

    The chunk is normalized by its whole micro-batch's totals, so the chunks' losses
    (and gradients) add up to the unchunked micro-batch's while activations are held
    for one chunk at a time. ``scale`` divides by the group's micro-batches (their mean)
    and multiplies by the number of processes (DDP and FSDP average across them).
    """
    batch = make_batch(rows, pad_id, share_prompts, norm).to(device)
    loss, parts = method.loss(model, batch, reference)
    if not torch.isfinite(loss):
        raise SSUError(f"loss is {loss.item()} at optimizer step {step}; lower train.lr")
    (loss / scale).backward()
    return {"loss": loss.item(), **parts}, int(batch.attention_mask.sum())


def _check_finite_gradients(params: list[torch.Tensor], step: int, procs: Processes) -> None:
    """A finite loss can still back-propagate inf/NaN (a diverged step before it); stop with
    the same one-line hint as a non-finite loss, before the mask or AdamW sees it. Checked
    chunk by chunk: ``isfinite`` of a whole embedding gradient is a 0.5 GB bool at 8B scale.
    Every process decides together (each may hold only a shard)."""
    finite = [torch.isfinite(c).all() for p in params if p.grad is not None for c in chunk_views(local(p.grad))]
    ok = torch.stack(finite).all() if finite else torch.ones((), dtype=torch.bool)
    if procs.distributed:
        ok = procs.sum((~ok).to(procs.device, torch.int64)) == 0
    if not bool(ok):
        raise SSUError(f"gradient is not finite at optimizer step {step}; lower train.lr")


def frozen_names(model, patterns: list[str]) -> list[str]:
    """The parameters ``train.frozen`` keeps out of a full fine-tune: those whose name matches one
    of ``patterns`` (``re.search``) -- e.g. ["wte", "wpe"], GPT-2's token and position embeddings,
    which every text reads. A pattern that does not compile, or a list that matches nothing, is a
    one-line error."""
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise SSUError(f"train.frozen: {e.pattern!r} is not a regular expression ({e})") from None
    names = [n for n, _ in model.named_parameters() if any(c.search(n) for c in compiled)]
    if patterns and not names:
        raise SSUError(f"train.frozen {list(patterns)} matches no parameter of the model")
    return names


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """The public reference's schedule: linear decay to zero, no warm-up."""
    return lambda s: 1.0 - s / max(total_steps, 1)


@dataclass
class Hooks:
    """Where a caller joins the loop: after every optimizer step (``on_step(step)``; tests
    simulate a crash there), after every epoch (``on_epoch(epoch, stats)``; True ends the
    fine-tune: memorize's and calibration's early stops), and whether to draw a progress bar."""

    on_step: StepHook | None = None
    on_epoch: EpochHook | None = None
    progress: bool = False


@dataclass
class FinetuneResult:
    """What a fine-tune leaves: the model as the processes trained it (wrapped by accelerate
    or sharded under a launcher), the saliency masker's last state, and the statistics a
    step records (``stats()``)."""

    model: torch.nn.Module
    masker: SaliencyMasker
    optimizer_steps: int = 0
    losses: list[dict] = field(default_factory=list)
    mask_fraction: list = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def stats(self) -> dict:
        return {"optimizer_steps": self.optimizer_steps, "losses": self.losses, "mask_fraction": self.mask_fraction,
                "tokens": self.tokens, "seconds": self.seconds}


def finetune(model, method, fs: ForgetSet, train: TrainSettings, hooks: Hooks | None = None, *,
             reference=None, procs: Processes | None = None,
             schedule: Callable[[int], Callable[[int], float]] = linear_decay) -> FinetuneResult:
    """Train the trainable parameters of ``model`` in place on the forget set ``fs``.

    The one training loop of ssu: ``ssu step`` (every method), ``ssu memorize`` and
    ``ssu retrain`` all run it. ``train`` gives the learning rate, epochs, batching,
    clipping and how each micro-batch is forwarded; the method gives the loss and its
    saliency mask (``saliency_mode``, ``saliency_k``, ``saliency_density``); ``fs`` the
    rows, the pad id and the seed of the micro-batch order. ``reference`` is the frozen
    θ_{t−1} a method or regularizer compares against. ``schedule(total_steps)`` gives
    the learning-rate factor per optimizer step.
    """
    hooks = hooks or Hooks()
    procs = procs or Processes()
    per_chunk = train.windows_per_backward or train.batch_size  # None: the whole micro-batch at once
    if not any(p.requires_grad for p in model.parameters()):
        raise SSUError("the model has no trainable parameters")
    model = procs.shard(model)  # FSDP: shards the model before its optimizer exists (else unchanged)
    device = next(model.parameters()).device
    n_micro = math.ceil(len(fs.learn) / train.batch_size)
    total_steps = train.epochs * math.ceil(n_micro / train.grad_accum)
    # foreach=False: the multi-tensor ("foreach") AdamW, torch's default on CUDA, takes
    # sqrt of every second moment at once -- a transient copy of all of them (16 GB for
    # 8B bf16 weights). The per-tensor loop holds one tensor's temporaries at a time and
    # is what torch already runs on CPU.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.lr,
                                  weight_decay=0.0, foreach=False)
    model, optimizer = procs.prepare(model, optimizer)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # after wrapping: FSDP's own
    params = [p for _, p in named]
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total_steps))
    masker = SaliencyMasker(method.saliency_mode, k=method.saliency_k, density=method.saliency_density,
                            shards=procs if procs.sharded else None, optimizer=optimizer)
    rng = random.Random(fs.seed)

    stats: dict = {"losses": [], "mask_fraction": [], "tokens": 0}
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"step {fs.step} ({method.name})",
               disable=not (hooks.progress and procs.is_main))
    step = 0
    try:
        for epoch in range(1, train.epochs + 1):
            method.start_epoch(procs.unwrap(model), fs, epoch)
            model.train()
            batches = list(micro_batches(fs, method, train.batch_size, rng))
            for g in range(0, len(batches), train.grad_accum):
                group = batches[g : g + train.grad_accum]
                _accumulate(model, method, group, fs.pad_id, train.share_prompts, per_chunk, device, reference,
                            procs, stats, step + 1, train.tokens_per_backward)
                _check_finite_gradients(params, step + 1, procs)
                mask_stats = masker(named)
                if mask_stats:
                    stats["mask_fraction"].append(mask_stats.get("fraction"))
                if train.max_grad_norm:
                    procs.clip_grad_norm_(params, train.max_grad_norm)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if stats["losses"]:
                    bar.set_postfix(loss=f"{stats['losses'][-1]['loss']:.3f}")
                if hooks.on_step is not None:
                    hooks.on_step(step)
            if hooks.on_epoch is not None and hooks.on_epoch(epoch, stats):
                break
    finally:
        bar.close()  # before any error message, so it is not mixed into the bar
    model.eval()
    if procs.distributed:
        stats["tokens"] = int(procs.sum(torch.tensor(stats["tokens"], device=procs.device)))
    # AdamW's moments (8 bytes per weight) end with the fine-tune, not held while the step's
    # vector is taken and calibrated: the masker and accelerate let go of the optimizer.
    masker.release()
    procs.release()
    return FinetuneResult(model=model, masker=masker, optimizer_steps=step, losses=stats["losses"],
                          mask_fraction=stats["mask_fraction"], tokens=stats["tokens"],
                          seconds=round(time.perf_counter() - start, 3))


def _accumulate(model, method, group, pad_id, share_prompts, per_chunk, device, reference, procs: Processes,
                stats: dict, step: int, tokens: int | None = None) -> None:
    """Every backward of one optimizer step on this process; gradients reduced in the last.

    A process left without a window (a group smaller than the world) still joins the
    reduction with a zero-weighted backward of one window, as DDP and FSDP require.
    The logged loss of each micro-batch is summed over its chunks and processes.
    """
    mine = shares(group, procs.rank, procs.world, per_chunk, tokens)
    idle = not mine
    if idle:
        mine = [(0, chunked(group[0][:1], 1)[0], group_totals(group[0][0]))]
    scale = len(group) / procs.world
    totals: list[dict[str, float]] = [{} for _ in group]
    for i, (m, rows, norm) in enumerate(mine):
        with procs.no_sync(model, skip=i < len(mine) - 1):
            parts, tokens = _backward(model, method, rows, norm, pad_id, share_prompts, device,
                                      math.inf if idle else scale, reference, step)
        stats["tokens"] += 0 if idle else tokens
        for k, v in parts.items():  # an idle process adds zeros under the same names, for the reduction
            totals[m][k] = totals[m].get(k, 0.0) + (0.0 if idle else v)
    if procs.distributed:  # every process's share of each micro-batch's loss
        keys = sorted({k for t in totals for k in t})
        summed = procs.sum(torch.tensor([[t.get(k, 0.0) for k in keys] for t in totals], dtype=torch.float64,
                                        device=procs.device)).tolist()
        totals = [dict(zip(keys, row)) for row in summed]
    stats["losses"] += [{k: round(v, 6) for k, v in t.items()} for t in totals]
