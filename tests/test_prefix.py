"""Prompt-prefix sharing (ssu/engine/prefix.py): the same loss and gradients as packed rows.

Tiny random GPT-2 and Llama models (float32, dropout 0) see one micro-batch twice --
packed full sequences and shared prompts -- with prompts and continuations of
different lengths, so left padding, position ids and the logit shift are exercised.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import ssu.engine.losses
import ssu.engine.prefix
from ssu.engine.encoding import Encoded
from ssu.engine.losses import LEARN, RANDOM, RETAIN, forward_nll, group_mean_nll, make_batch
from ssu.engine.prefix import accepts_shared_prompts, shared_prompt_nll
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.vectors import load_vector

VOCAB, PAD = 53, 0


def tiny(arch: str, attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                         attn_implementation=attn)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=PAD, attn_implementation=attn)
    model = (GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM)(cfg).float()
    return model.train()  # dropout is 0: train mode must not matter, but is what fine-tuning uses


def micro_batch() -> list[tuple[Encoded, int]]:
    """3 windows (prompts of 7, 3, 5 tokens) x (1 learning + 3 random-label rows) + 1 retain row."""
    rng = random.Random(0)

    def seq(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    prompts, conts = [seq(n) for n in (7, 3, 5)], [seq(n) for n in (4, 6, 2, 5, 1)]
    rows = [(Encoded(p + conts[i], len(p)), LEARN) for i, p in enumerate(prompts)]
    rows += [(Encoded(p + conts[(i + j) % 5], len(p)), RANDOM) for i, p in enumerate(prompts) for j in (1, 2, 3)]
    return rows + [(Encoded(seq(4) + seq(3), 4), RETAIN)]


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    nll, mask = forward_nll(model, batch)
    loss = sum(w * group_mean_nll(nll, mask, batch, g) for g, w in ((LEARN, 1.0), (RANDOM, 0.5), (RETAIN, 1.0)))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch,attn", [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"), ("llama", "eager")])
def test_shared_prompts_give_the_packed_loss_and_gradients(arch, attn):
    model, rows = tiny(arch, attn), micro_batch()
    shared = make_batch(rows, PAD, share_prompts=True)
    s = shared.shared
    assert accepts_shared_prompts(model)
    assert len(s.prompts) == 4 and s.prompt_index == [0, 1, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # one pass per prompt
    assert shared_prompt_nll(model, s.prompts, s.continuations, s.prompt_index, PAD) is not None  # no fallback

    packed_loss, packed_grads = loss_and_grads(model, make_batch(rows, PAD))
    shared_loss, shared_grads = loss_and_grads(model, shared)
    assert shared_loss == pytest.approx(packed_loss, abs=1e-5)
    for name, g in packed_grads.items():
        scale = g.abs().max().clamp(min=1e-12)
        assert float((shared_grads[name] - g).abs().max() / scale) < 1e-5, name

    # Per row, the counted tokens and their NLL sum agree (the layouts differ: by position vs by token).
    nll_p, mask_p = forward_nll(model, make_batch(rows, PAD))
    nll_s, mask_s = forward_nll(model, shared)
    assert torch.equal(mask_p.sum(1), mask_s.sum(1))
    torch.testing.assert_close(nll_s.sum(1), nll_p.sum(1), atol=1e-5, rtol=1e-5)


def test_models_without_a_cache_interface_use_the_packed_path(caplog, monkeypatch):
    model = tiny("gpt2", "eager")
    monkeypatch.setattr(ssu.engine.prefix, "_warned", set())

    class LogitsOnly(torch.nn.Module):  # forward(input_ids, attention_mask) only
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)

    wrapped, rows = LogitsOnly(), micro_batch()
    assert not accepts_shared_prompts(wrapped)
    nll_a, mask_a = forward_nll(wrapped, make_batch(rows, PAD, share_prompts=True))
    nll_b, mask_b = forward_nll(wrapped, make_batch(rows, PAD))
    assert torch.equal(nll_a, nll_b) and torch.equal(mask_a, mask_b)
    forward_nll(wrapped, make_batch(rows, PAD, share_prompts=True))
    said = [r.getMessage() for r in caplog.records if r.name == "ssu.engine.prefix"]
    assert len(said) == 1 and "prompt sharing is off for LogitsOnly" in said[0]  # said once, not silently


def test_the_cache_argument_is_found_under_either_name():
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); both must enable sharing."""
    from ssu.engine.prefix import _cache_arg

    assert _cache_arg({"position_ids", "use_cache", "cache"}) == "cache"
    assert _cache_arg({"position_ids", "use_cache", "past_key_values"}) == "past_key_values"
    assert _cache_arg({"position_ids", "cache"}) is None


def test_ssu_step_with_shared_prompts_matches_the_packed_step(run_dir, monkeypatch):
    used = []

    def spy(*args):
        out = shared_prompt_nll(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(ssu.engine.losses, "shared_prompt_nll", spy)
    runs = {share: run_dir(name=f"share-{share}", train={"share_prompts": share}) for share in (True, False)}
    run_step(runs[False], 1, progress=False)
    assert used == []  # share_prompts=false: packed rows only
    run_step(runs[True], 1, progress=False)
    # 2 epochs x 3 micro-batches x 2 windows (one window per backward), all through the shared path
    assert len(used) == 12 and all(used)
    assert RunDir(runs[True]).config.train.share_prompts and not RunDir(runs[False]).config.train.share_prompts
    shared, _ = load_vector(RunDir(runs[True]).vector_path(1))
    packed, _ = load_vector(RunDir(runs[False]).vector_path(1))
    assert shared.keys() == packed.keys()
    diff = max(float((shared[k] - packed[k]).abs().max()) for k in shared.keys())
    assert diff < 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rows_at_the_position_limit_stay_inside_the_position_table(arch):
    """A long prompt with a short continuation next to a short prompt with a long one:
    every row fits the 64-position table, but the padded continuation columns of the
    first row must not count past it (GPT-2's learned table raised IndexError)."""
    model = tiny(arch, "sdpa")
    rng = random.Random(1)

    def seq(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    long_prompt, short_prompt = seq(60), seq(4)
    rows = [(Encoded(long_prompt + seq(4), 60), LEARN), (Encoded(short_prompt + seq(60), 4), LEARN),
            (Encoded(long_prompt + seq(3), 60), RANDOM)]
    shared = make_batch(rows, PAD, share_prompts=True)
    out = shared_prompt_nll(model, shared.shared.prompts, shared.shared.continuations, shared.shared.prompt_index, PAD)
    assert out is not None
    nll_p, mask_p = forward_nll(model, make_batch(rows, PAD))
    torch.testing.assert_close(out[0].sum(1), nll_p.sum(1), atol=1e-5, rtol=1e-5)
