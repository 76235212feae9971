"""The methods' toy world: a tiny random GPT-2 and a hand-built forget set of random token windows.

Shared by tests/test_methods.py and tests/test_rollouts.py (each wraps :func:`toy_world` and
:func:`memorize_toy` in module fixtures). Every method is driven through the real engine
(``ssu.engine.finetune.finetune``), so batching, groups and the reference model are exercised
exactly as ``ssu step`` uses them.
"""

from __future__ import annotations

import copy
import random

import torch
from conftest import make_method, train_settings
from transformers import AutoModelForCausalLM, GPT2Config

from ssu.engine.encoding import Encoded
from ssu.engine.finetune import finetune
from ssu.engine.forget_set import ForgetSet
from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch

PAD, VOCAB = 0, 100


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64,
                     bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def pairs(n: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    return [Encoded(ids=[rng.randrange(2, VOCAB) for _ in range(16)], n_prompt=8) for _ in range(n)]


def toy_world() -> tuple[ForgetSet, torch.nn.Module]:
    """Four forget and four retain windows of 8 + 8 random tokens, and an untrained model."""
    learn, retain = pairs(4, 1), pairs(4, 2)
    # Random labels: each prompt with the continuations of two other forget windows.
    rand = [[Encoded(learn[i].prompt_ids + learn[j].continuation_ids, 8) for j in range(4) if j != i][:2]
            for i in range(4)]
    fs = ForgetSet(step=1, books=["b"], windows=[], learn=learn, random=rand, retain=retain, pad_id=PAD)
    return fs, tiny_model()


def memorize_toy(world):
    """The world's model trained to near-zero CE on its forget and retain windows (60 full-batch Adam steps)."""
    fs, base = world
    model = copy.deepcopy(base).requires_grad_(True).train()
    batch = make_batch([(e, LEARN) for e in fs.learn + fs.retain], PAD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        nll, mask = forward_nll(model, batch)
        opt.zero_grad()
        group_mean_nll(nll, mask, batch, LEARN).backward()
        opt.step()
    return fs, model.eval().requires_grad_(False)


def ce(model, encs: list[Encoded]) -> float:
    batch = make_batch([(e, LEARN) for e in encs], PAD)
    with torch.no_grad():
        nll, mask = forward_nll(model, batch)
    return float(group_mean_nll(nll, mask, batch, LEARN))


def train(name: str, world, lr: float = 1e-2, epochs: int = 3, **args):
    """Fine-tune a copy of the model with method ``name``; return (method, start, fine-tuned)."""
    fs, base = world
    method = make_method(name, **args)
    model = copy.deepcopy(base).requires_grad_(True)
    method.prepare(model, fs)  # as the step recipe does, at θ_{t-1}
    reference = copy.deepcopy(base).requires_grad_(False) if method.needs_reference else None
    finetune(model, method, fs, train_settings(lr=lr, epochs=epochs, batch_size=2), reference=reference)
    return method, base, model
