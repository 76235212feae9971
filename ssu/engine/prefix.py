"""Prompt-prefix sharing: forward each prompt once, however many continuations follow it.

An SSU micro-batch trains, per forget window, the learning row (prompt + its own
continuation) and K random-label rows (the *same* prompt + K other continuations).
Packed as full sequences, the prompt -- about half the tokens -- goes through the
model 1 + K times. Here it goes through once, and the continuations attend to its
key/value cache; the graph runs through the cache, so ONE backward still reaches
every weight the prompt touched. Any Hugging Face causal LM whose ``forward``
takes ``position_ids``, ``use_cache`` and a cache argument works -- ``cache`` since
transformers 5.2x, ``past_key_values`` before (both are recognised) -- and returns a
cache object with ``batch_select_indices``. Other models (and batches with an empty
prompt) fall back to the packed path (``None`` here), and the first fallback for a
model that lacks the interface logs one warning saying so: the loss is the same, only
slower, and a silent fallback is how a transformers rename once went unnoticed.

The two passes:

1. Prompts, LEFT-padded so every prompt ends in the last column ``P - 1``; the
   attention mask hides the padding and ``position_ids = cumsum(mask) - 1``
   (clamped at 0 on the padding), so a prompt of n tokens sits at positions
   0..n-1 exactly as in the packed row. ``use_cache=True`` returns the keys and
   values; the logit of the last column predicts each continuation's FIRST token.
2. Continuations, RIGHT-padded, with the cache gathered along the batch dimension
   (row r gets the cache of its prompt ``prompt_index[r]``; a differentiable
   index, not an in-place copy), attention mask ``[prompt mask of row r,
   continuation mask]`` and positions ``n_prompt(r) + j`` (padding repeats the
   row's last position, so no row goes past its own length). The logit at column j
   predicts continuation token j + 1, so the last token is never fed in.

Row r's per-token NLL is ``[first-token NLL, continuation-pass NLLs]``, laid out
by continuation token (column j = token j) instead of by absolute position; the
losses only sum over rows and tokens (``group_mean_nll``, ``sequence_logprob``),
so they are unchanged. Rows keep the order given, so ``Batch.group`` applies.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.encoding import IGNORE_INDEX, Encoded

_NEEDED = ("position_ids", "use_cache")
_CACHE_ARGS = ("cache", "past_key_values")  # transformers >= 5.2x, then older releases
log = logging.getLogger(__name__)
_warned: set[str] = set()


@dataclass(frozen=True)
class SharedPrompts:
    """A micro-batch regrouped by prompt: the distinct prompts, and per row its
    prompt's index and its continuation (rows in the micro-batch's order)."""

    prompts: list[list[int]]
    prompt_index: list[int]
    continuations: list[list[int]]
    pad_id: int


def group_by_prompt(rows: list[Encoded], pad_id: int) -> SharedPrompts | None:
    """Rows with identical prompt ids share one prompt; ``None`` if a prompt is empty."""
    seen: dict[tuple[int, ...], int] = {}
    index = [seen.setdefault(tuple(e.prompt_ids), len(seen)) for e in rows]
    if any(len(p) == 0 for p in seen) or not any(e.continuation_ids for e in rows):
        return None
    return SharedPrompts([list(p) for p in seen], index, [e.continuation_ids for e in rows], pad_id)


def _forward_params(model) -> set[str]:
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP / FSDP1 wrappers
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return set()
    return set(inspect.signature(base.forward).parameters)


def _cache_arg(accepted: set[str]) -> str | None:
    """The name under which ``forward`` takes a KV cache, if the other arguments are there too."""
    if not set(_NEEDED) <= accepted:
        return None
    return next((name for name in _CACHE_ARGS if name in accepted), None)


def accepts_shared_prompts(model) -> bool:
    return _cache_arg(_forward_params(model)) is not None


def _fall_back(model, why: str) -> None:
    """Warn once per model class that the shared-prompt path cannot run (the packed path is exact, but slower)."""
    name = type(model).__name__
    if name not in _warned:
        _warned.add(name)
        log.warning("prompt sharing is off for %s (%s); using packed rows: same loss, more compute", name, why)


def shared_prompt_nll(model, prompts: list[list[int]], continuations: list[list[int]],
                      prompt_index: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-token NLL ``(rows, max continuation length)`` and its mask, row r being
    ``prompts[prompt_index[r]] + continuations[r]``; ``None`` if the model cannot share."""
    accepted = _forward_params(model)
    cache_arg = _cache_arg(accepted)
    if cache_arg is None:
        _fall_back(model, "its forward takes no position_ids/use_cache/cache arguments")
        return None
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    p_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    p_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        p_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        p_mask[i, width - len(p):] = 1
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, **keep)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not hasattr(cache, "batch_select_indices"):  # legacy tuple caches: use the packed path
        _fall_back(model, f"its cache ({type(cache).__name__}) has no batch_select_indices")
        return None

    n_cont = max(len(c) for c in continuations)
    target = torch.full((len(continuations), n_cont), IGNORE_INDEX, dtype=torch.long)
    for r, c in enumerate(continuations):
        target[r, : len(c)] = torch.tensor(c, dtype=torch.long)
    target = target.to(device)
    mask = target != IGNORE_INDEX
    idx = torch.tensor(prompt_index, dtype=torch.long, device=device)

    # Token 0 of every row: the last prompt logit, computed once per prompt.
    last = out.logits[:, -1].float()
    nll = [F.cross_entropy(last[idx], target[:, 0].clamp(min=0), reduction="none")[:, None]]
    if n_cont > 1:
        cache.batch_select_indices(idx)  # prompt r's keys/values for each of its rows (differentiable)
        c_mask = mask[:, :-1].long()
        logits = model(
            input_ids=target[:, :-1].masked_fill(~mask[:, :-1], pad_id),
            attention_mask=torch.cat([p_mask[idx], c_mask], dim=1),
            # Padding columns repeat the row's last position instead of counting on: a row
            # with a long prompt and a short continuation, batched with a longer
            # continuation, would otherwise run past a learned position table (GPT-2's 512).
            position_ids=p_mask.sum(1)[idx, None] + (c_mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True, **{cache_arg: cache},
        ).logits.float()
        rest = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target[:, 1:].clamp(min=0).reshape(-1),
                               reduction="none").view(len(continuations), n_cont - 1)
        nll.append(rest)
    return torch.cat(nll, dim=1) * mask, mask
