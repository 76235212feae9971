"""Batched greedy continuation with a KV cache, without compilation stalls.

Prompts are sorted by length and batched with left padding (and the matching
attention mask), so each batch pads little and the newest token of every row sits
in the last column, where ``generate`` reads the next-token logits. Greedy decoding
is deterministic, and batching does not change which tokens are produced (tested
against one-prompt-at-a-time generation, with either cache).

Which KV cache (``cache="auto"``): transformers compiles the forward pass whenever
``generate`` runs with a compileable cache (the static one) on CUDA, XPU, TPU or
Neuron, once per new batch shape -- and every evaluation meets new shapes (the last
partial batch, a different longest prompt or budget). On one H100 (8B shape, 64
prompts) that made the first call 89.7 s against 27.2 s with the dynamic cache; warm
calls were 5.0 s and 12.0 s, but each ``ssu eval`` is a fresh process that pays the
first call. Bucketing shapes would still pay one compilation per bucket, so on an
accelerator ``auto`` takes the **dynamic cache**, which transformers never compiles.
On a CPU transformers never compiles either, and the pre-allocated static cache was
measured ~15 % faster at batch 32 (no per-token concatenation of keys and values), so
``auto`` keeps it there.

Batch size: at most ``batch_size`` prompts, and, with ``tokens_per_batch``, at most
that many tokens of (longest padded prompt + largest budget) x rows -- the KV cache
and activations scale with it, so one budget fits short and long prompts alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ssu.engine.encoding import encode_pair

CACHES = ("auto", "static", "dynamic")


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
    tokens_per_batch: int | None = None,
    cache: str = "auto",
    sampling: Sampling | None = None,
) -> list[list[int]]:
    """Greedy-decode a continuation for each tokenized prompt (or sample one, with ``sampling``).

    Args:
        prompts: token ids per prompt (no padding).
        max_new_tokens: one budget for all prompts, or one per prompt (e.g. the
            reference continuation's length); a batch decodes to its largest budget
            and each row is cut to its own.
        batch_size: most prompts per batch.
        tokens_per_batch: if set, also at most this many (padded prompt + budget)
            tokens per batch; a prompt that alone exceeds it is decoded alone.
        cache: ``"auto"`` (static on a CPU, dynamic elsewhere; see the module
            docstring), ``"static"`` or ``"dynamic"``.
        sampling: sample at this temperature and top-p instead of decoding greedily
            (the extraction probe); draws follow torch's global generator, so the
            caller seeds it. A prompt given k times gets k independent samples.
    Returns:
        the generated token ids per prompt (prompt excluded), in input order.
    """
    n = len(prompts)
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError("need one max_new_tokens per prompt")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
    device = next(model.parameters()).device
    if cache == "auto":
        cache = "static" if device.type == "cpu" else "dynamic"
    pad_id = tokenizer.pad_token_id
    order = sorted(range(n), key=lambda i: (len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in range(n)]
    was_training = model.training
    model.eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    batches = [
        part
        for group in _token_batches(order, prompts, budgets, batch_size, tokens_per_batch)
        for part in _fit_positions(group, prompts, budgets, limit)
    ]
    for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            p = torch.as_tensor(list(prompts[i]), dtype=torch.long)
            ids[row, width - len(p) :] = p
            mask[row, width - len(p) :] = 1
        budget = max(budgets[i] for i in batch)
        if budget <= 0:
            continue
        cfg = _greedy_config(model, tokenizer, budget, cache, sampling)
        try:
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
        except ValueError:  # this architecture has no static cache: the default cache is as correct
            cfg.cache_implementation = None
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
        new = gen[:, width:].tolist()
        for row, i in enumerate(batch):
            out[i] = _strip_after_eos(new[row][: budgets[i]], cfg.eos_token_id)
    model.train(was_training)
    return out


def _token_batches(order: list[int], prompts, budgets: list[int], batch_size: int,
                   tokens_per_batch: int | None) -> list[list[int]]:
    """Cut the length-sorted ``order`` into batches of <= batch_size rows and <= the token budget."""
    batches: list[list[int]] = []
    cur: list[int] = []
    width = budget = 0
    for i in order:
        w, b = max(width, len(prompts[i])), max(budget, budgets[i])
        full = len(cur) >= batch_size or (tokens_per_batch is not None and (len(cur) + 1) * (w + b) > tokens_per_batch)
        if cur and full:
            batches.append(cur)
            cur, w, b = [], len(prompts[i]), budgets[i]
        cur.append(i)
        width, budget = w, b
    if cur:
        batches.append(cur)
    return batches


def _fit_positions(batch: list[int], prompts, budgets: list[int], limit: int | None) -> list[list[int]]:
    """Split a batch until every row's positions stay inside the model's position table.

    A batch decodes to its largest budget, so a row with a long prompt would run past
    its own budget -- and past ``max_position_embeddings`` on models with learned
    positions (GPT-2) -- when it shares a batch with a row that has a long budget.
    """
    budget = max(budgets[i] for i in batch)
    if limit is None or len(batch) == 1 or all(len(prompts[i]) + budget <= limit for i in batch):
        return [batch]
    half = len(batch) // 2
    return (_fit_positions(batch[:half], prompts, budgets, limit)
            + _fit_positions(batch[half:], prompts, budgets, limit))


def generate_continuations(
    model,
    tokenizer,
    windows: Sequence[dict],
    batch_size: int = 32,
    max_length: int = 512,
    progress: bool = False,
    tokens_per_batch: int | None = None,
    sampling: Sampling | None = None,
) -> list[str]:
    """Greedy continuation text for each window's prompt (memorization setting).

    The budget per window is the token length of its reference continuation, so a
    perfect memorizer reproduces the reference exactly. Only the prompt is given.
    ``sampling``: sample instead (see :func:`greedy_generate`).
    """
    encoded = [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows]
    tokens = greedy_generate(
        model,
        tokenizer,
        [e.prompt_ids for e in encoded],
        [len(e.continuation_ids) for e in encoded],
        batch_size=batch_size,
        progress=progress,
        tokens_per_batch=tokens_per_batch,
        sampling=sampling,
    )
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding: ``temperature`` and nucleus ``top_p`` (1.0: the whole distribution)."""

    temperature: float = 1.0
    top_p: float = 1.0


def _greedy_config(model, tokenizer, budget: int, cache: str = "static", sampling: Sampling | None = None):
    # A fresh config, so sampling knobs (temperature, top_p, repetition penalty)
    # that a model ships in its generation_config cannot leak into greedy decoding;
    # sampling, when asked, sets exactly temperature and top-p (top-k off).
    from transformers import GenerationConfig

    knobs = {"do_sample": False} if sampling is None else \
        {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}

    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return GenerationConfig(
        **knobs,
        num_beams=1,
        max_new_tokens=budget,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        # static: pre-allocated (faster on a CPU); None: the dynamic cache, never compiled.
        cache_implementation="static" if cache == "static" else None,
    )


def _strip_after_eos(tokens: list[int], eos_id) -> list[int]:
    # Rows that finish early are filled with pad after EOS; drop EOS and the fill.
    stops = set(eos_id) if isinstance(eos_id, (list, tuple)) else {eos_id}
    for j, t in enumerate(tokens):
        if t in stops:
            return tokens[:j]
    return tokens
