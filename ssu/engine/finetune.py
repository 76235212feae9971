"""The fine-tune of one time step: batches, accumulation, saliency mask, optimizer.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` forget windows.
A micro-batch holds each window's learning pair, its K random-label pairs (if the
method uses them) and as many retain pairs (if it needs them). It is forwarded and
back-propagated in chunks of ``windows_per_backward`` windows, each chunk one padded
tensor and one backward (``train.windows_per_backward`` for a run; here the default
is the whole micro-batch): the gradient is the same for any chunk size, only the
activation memory held at once changes. With ``share_prompts``, each distinct
prompt is forwarded once and its rows reuse its key/value cache (``ssu/engine/prefix.py``).
After accumulation the saliency mask multiplies the gradient
in place (m * g) and only then does AdamW step. Weight decay is off so a weight
whose gradient is always masked stays bit-identical (Adam's update for an all-zero
gradient history is exactly zero). Under ``accelerate launch`` each process runs
its share of a group's micro-batches and the gradients are summed before the mask
(``ssu/engine/distributed.py``).

Memory: the run must fit 7-8B models, so beyond the weights, their gradients and
AdamW's two moments nothing full-size is kept or built at once: the saliency mask
and the finiteness check work chunk by chunk, and AdamW runs its per-tensor loop
(see :func:`finetune`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ssu.engine.distributed import Workers
from ssu.engine.forget_set import ForgetSet
from ssu.engine.losses import LEARN, RANDOM, RETAIN, Row, group_totals, make_batch
from ssu.engine.saliency import SaliencyMasker, chunk_views
from ssu.errors import SSUError

# Called after every optimizer step with the step index; tests use it to simulate a
# crash in the middle of a time step.
StepHook = Callable[[int], None]


def micro_batches(fs: ForgetSet, method, batch_size: int, rng: random.Random):
    """Yield one list per micro-batch for one epoch: per forget window, its
    ``(encoded, group)`` rows (learning row, K random-label rows, a retain row)."""
    order = list(range(len(fs.learn)))
    rng.shuffle(order)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        windows: list[list[Row]] = [[(fs.learn[i], LEARN)] for i in idx]
        if method.uses_random_labels:
            for rows, i in zip(windows, idx):
                rows += [(e, RANDOM) for e in fs.random[i]]
        if method.needs_retain:
            for rows in windows:
                rows.append((fs.retain[rng.randrange(len(fs.retain))], RETAIN))
        yield windows


def chunked(windows: list[list[Row]], per_chunk: int) -> list[list[Row]]:
    """The micro-batch's rows in chunks of ``per_chunk`` windows (one forward + backward each)."""
    return [[r for w in windows[c : c + per_chunk] for r in w] for c in range(0, len(windows), per_chunk)]


def _backward(model, method, windows: list[list[Row]], pad_id: int, share_prompts: bool, per_chunk: int,
              device, group_size: int, reference, stats: dict, step: int) -> None:
    """Loss and backward of one micro-batch, scaled so the group's gradients average.

    The micro-batch goes through in chunks of ``per_chunk`` windows, each normalized
    by the whole micro-batch's totals, so the summed gradient (and the logged loss)
    is the unchunked one while activations are held for one chunk at a time.
    Dividing by the whole group's size (not this process's share of it) makes the
    cross-process sum under a launcher the plain mean over the group.
    """
    norm = group_totals([r for w in windows for r in w])
    total: dict[str, float] = {}
    for rows in chunked(windows, per_chunk):
        batch = make_batch(rows, pad_id, share_prompts, norm).to(device)
        loss, parts = method.loss(model, batch, reference)
        if not torch.isfinite(loss):
            raise SSUError(f"loss is {loss.item()} at optimizer step {step}; lower train.lr")
        (loss / group_size).backward()
        stats["tokens"] += int(batch.attention_mask.sum())
        for k, v in {"loss": loss.item(), **parts}.items():
            total[k] = total.get(k, 0.0) + v
    stats["losses"].append({k: round(v, 6) for k, v in total.items()})


def _check_finite_gradients(params: list[torch.Tensor], step: int) -> None:
    """A finite loss can still back-propagate inf/NaN (a diverged step before it); stop with
    the same one-line hint as a non-finite loss, before the mask or AdamW sees it. Checked
    chunk by chunk: ``isfinite`` of a whole embedding gradient is a 0.5 GB bool at 8B scale."""
    finite = [torch.isfinite(c).all() for p in params if p.grad is not None for c in chunk_views(p.grad)]
    if finite and not bool(torch.stack(finite).all()):
        raise SSUError(f"gradient is not finite at optimizer step {step}; lower train.lr")


def finetune(
    model,
    method,
    fs: ForgetSet,
    pad_id: int,
    lr: float,
    epochs: int,
    batch_size: int,
    grad_accum: int,
    max_grad_norm: float,
    saliency_k: float,
    saliency_density: float | None,
    seed: int,
    reference=None,
    progress: bool = True,
    on_step: StepHook | None = None,
    share_prompts: bool = True,
    workers: Workers | None = None,
    windows_per_backward: int | None = None,
) -> dict:
    """Train the trainable parameters of ``model`` in place; return statistics."""
    workers = workers or Workers()
    windows_per_backward = windows_per_backward or batch_size  # None: the whole micro-batch at once
    device = next(model.parameters()).device
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise SSUError("the model has no trainable parameters")
    params = [p for _, p in named]
    n_micro = math.ceil(len(fs.learn) / batch_size)
    total_steps = epochs * math.ceil(n_micro / grad_accum)
    # foreach=False: the multi-tensor ("foreach") AdamW, torch's default on CUDA, takes
    # sqrt of every second moment at once -- a transient copy of all of them (16 GB for
    # 8B bf16 weights). The per-tensor loop holds one tensor's temporaries at a time and
    # is what torch already runs on CPU.
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False)
    # Linear decay to zero without warm-up, as the public reference's schedule.
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(total_steps, 1))
    masker = SaliencyMasker(method.saliency_mode, k=saliency_k, density=saliency_density)
    rng = random.Random(seed)
    model.train()

    stats: dict = {"optimizer_steps": 0, "losses": [], "mask_fraction": [], "tokens": 0}
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"step {fs.step} ({method.name})", disable=not progress)
    step = 0
    try:
        for _ in range(epochs):
            batches = list(micro_batches(fs, method, batch_size, rng))
            for g in range(0, len(batches), grad_accum):
                group = batches[g : g + grad_accum]
                for windows in workers.shard(group):
                    _backward(model, method, windows, pad_id, share_prompts, windows_per_backward, device,
                              len(group), reference, stats, step + 1)
                workers.sum_gradients(params)
                _check_finite_gradients(params, step + 1)
                mask_stats = masker(named)
                if mask_stats:
                    stats["mask_fraction"].append(mask_stats.get("fraction"))
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if stats["losses"]:
                    bar.set_postfix(loss=f"{stats['losses'][-1]['loss']:.3f}")
                if on_step is not None:
                    on_step(step)
    finally:
        bar.close()  # before any error message, so it is not mixed into the bar
    model.eval()
    stats["optimizer_steps"] = step
    stats["seconds"] = round(time.perf_counter() - start, 3)
    stats["masker"] = masker
    return stats
