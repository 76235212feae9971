"""Batched greedy generation must produce exactly what one-at-a-time generation does."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import read_window_rows
from ssu.engine.encoding import encode_pair
from ssu.eval.generation import generate_continuations, greedy_generate
from ssu.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_and_windows(synthetic_world):
    tok = load_tokenizer(str(synthetic_world.memorized))
    model = load_model(str(synthetic_world.memorized), device="cpu")
    windows = read_window_rows(synthetic_world.prepared)
    return model, tok, windows


@pytest.mark.parametrize("cache, tokens_per_batch", [("static", None), ("dynamic", 300)])
def test_batched_equals_one_by_one(model_and_windows, cache, tokens_per_batch):
    model, tok, windows = model_and_windows
    # Prompts of different lengths, so left padding is really exercised.
    prompts = [encode_pair(tok, w["prompt"], w["continuation"]).prompt_ids for w in windows]
    prompts = [p[: len(p) - (i % 4) * 3] for i, p in enumerate(prompts)]
    assert len({len(p) for p in prompts}) > 1
    batched = greedy_generate(model, tok, prompts, 24, batch_size=8, cache=cache, tokens_per_batch=tokens_per_batch)
    single = [greedy_generate(model, tok, [p], 24, batch_size=1, cache="static")[0] for p in prompts]
    assert batched == single
    # and equal to HF generate on the unpadded prompt, the plainest possible call
    import torch

    ref = model.generate(torch.tensor([prompts[0]]), do_sample=False, max_new_tokens=24,
                         pad_token_id=tok.pad_token_id)[0, len(prompts[0]):].tolist()
    assert batched[0] == ref[: len(batched[0])]


def test_per_prompt_budgets_and_memorized_text(model_and_windows):
    model, tok, windows = model_and_windows
    forget = [w for w in windows if w["role"] == "forget"][:4]
    prompts = [encode_pair(tok, w["prompt"], w["continuation"]).prompt_ids for w in forget]
    out = greedy_generate(model, tok, prompts, [1, 5, 9, 0], batch_size=4)
    assert [len(o) for o in out] == [1, 5, 9, 0]
    texts = generate_continuations(model, tok, forget, batch_size=4)
    # the memorized model reproduces most windows verbatim
    exact = sum(t == w["continuation"] for t, w in zip(texts, forget))
    assert exact >= 2, texts


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_equals_single_and_stops_at_the_models_eos(arch):
    """Left padding, positions and the EOS cut are right for both families (random tiny models)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    class Tok:  # the eos the model's generation config names is the one that stops decoding
        pad_token_id, eos_token_id = 0, 1

    cfg = (LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=100, eos_token_id=2, bos_token_id=3)
           if arch == "llama" else GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, eos_token_id=2,
                                              bos_token_id=3))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [20, 21]]
    batched = greedy_generate(model, Tok, prompts, 8, batch_size=4)
    single = [greedy_generate(model, Tok, [p], 8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(2 not in out for out in batched)  # cut at the model's EOS, never padded past it


def test_batches_are_split_to_stay_inside_learned_positions():
    """A long prompt batched with a long budget must not run past GPT-2's position table."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32, eos_token_id=1)).eval()
    prompts = [list(range(5, 29)), [5, 6, 7]]  # 24 + 4 fits, 3 + 20 fits; together 24 + 20 does not
    batched = greedy_generate(model, Tok, prompts, [4, 20], batch_size=2)
    single = [greedy_generate(model, Tok, [p], [b], batch_size=1)[0] for p, b in zip(prompts, [4, 20])]
    assert batched == single


def test_token_budget_batches():
    from ssu.eval.generation import _token_batches

    prompts = [[0] * n for n in (2, 3, 5, 8, 9)]
    # rows x (longest prompt + largest budget) <= 20; a prompt over the budget alone still gets a batch
    assert _token_batches(list(range(5)), prompts, [2] * 5, 8, 21) == [[0, 1, 2], [3], [4]]  # 3 x 7, 11, 11
    assert _token_batches(list(range(5)), prompts, [2] * 5, 8, 20) == [[0, 1], [2, 3], [4]]  # 2 x 5, 2 x 10
    assert _token_batches(list(range(5)), prompts, [2] * 5, 8, 5) == [[0], [1], [2], [3], [4]]
    assert _token_batches(list(range(5)), prompts, [2] * 5, 2, None) == [[0, 1], [2, 3], [4]]


def test_chunked_logprobs_equal_the_unchunked_ones(model_and_windows):
    """Batches of eval.batch_size and position chunks give log_softmax(float32 logits) at the targets."""
    import torch

    from ssu.engine.encoding import collate
    from ssu.eval.logprobs import token_logprobs

    model, tok, windows = model_and_windows
    windows = windows[:7]
    ref = []
    with torch.no_grad():
        for w in windows:
            ids = encode_pair(tok, w["prompt"], w["continuation"], 512).ids
            batch = collate([ids], [0], tok.pad_token_id)
            logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits.float(), dim=-1)[0, :-1]
            ref.append(logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).numpy())
    for batch_size, chunk in [(1, 1024), (3, 7), (16, 1)]:
        got = token_logprobs(model, tok, windows, 512, batch_size=batch_size, positions_per_chunk=chunk)
        assert [len(g) for g in got] == [len(r) for r in ref]
        for g, r in zip(got, ref):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, r, rtol=0, atol=2e-5)
