"""Memory that scales to 7-8B models: no full-size state beyond weights, gradients and AdamW's moments.

* The saliency masker masks chunk by chunk, bit-identically to the whole-mask product,
  and keeps no tensor after a call (mode "fixed", SalUn, keeps its one mask by design).
* The packed loss path evaluates the LM head only from the first position that
  predicts a label (``logits_to_keep``), with the full-logits loss and gradients.
* The fine-tune's AdamW runs per tensor (the multi-tensor one copies all moments), and its
  moments end with the fine-tune: nothing holds them while the step's vector is taken.
"""

from __future__ import annotations

import gc
import random
import weakref
from types import SimpleNamespace

import pytest
import torch
from conftest import forget_set_of, make_method, train_settings
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import ssu.engine.saliency
from ssu.engine.encoding import Encoded
from ssu.engine.finetune import finetune
from ssu.engine.losses import LEARN, RANDOM, RETAIN, Batch, forward_nll, group_mean_nll, make_batch, token_nll
from ssu.engine.saliency import SaliencyMasker, apply_masks, compute_masks, saliency_threshold, topk_threshold
from ssu.models.loading import load_tokenizer

VOCAB, PAD = 61, 0


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: equal only when bit-identical (-0.0 differs from 0.0)."""
    return t.contiguous().view(-1).view(torch.uint8)


def held_tensors(obj, depth: int = 0) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj``'s attributes through dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 4:
        return []
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in held_tensors(item, depth + 1)]


# --- the saliency mask ---------------------------------------------------------------------


def fake_params(dtype: torch.dtype) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters with gradients of realistic size (~1e-4), one of them not contiguous
    (a transposed weight), one 0-dim, with exact ties and signed zeros."""
    gen = torch.Generator().manual_seed(0)

    def grad(shape):
        return (torch.randn(shape, generator=gen) * 1e-4).to(dtype)

    shapes = {"emb": (37, 8), "proj_t": (6, 11), "norm": (8,), "scalar": ()}
    named = [(n, torch.nn.Parameter(torch.randn(s, generator=gen).mul(0.02).to(dtype))) for n, s in shapes.items()]
    for _, p in named:
        p.grad = grad(p.shape)
    named[1][1].grad = grad((11, 6)).t()  # same shape, transposed strides
    assert not named[1][1].grad.is_contiguous()
    named[0][1].grad[0, :4] = torch.tensor([0.0, -0.0, 3e-4, -3e-4], dtype=dtype)  # ties and signed zeros
    return named


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density", [None, 0.1])
def test_step_masking_is_chunked_and_bit_identical(dtype, density, monkeypatch):
    named = fake_params(dtype)
    grads = {n: p.grad.clone() for n, p in named}
    reference = {n: p.grad.clone() for n, p in named}  # the whole-mask path: compute_masks + apply_masks
    ref_named = [(n, SimpleNamespace(grad=reference[n])) for n, _ in named]
    ref_masks = compute_masks(ref_named, density=density)
    apply_masks(ref_named, ref_masks)

    monkeypatch.setattr(ssu.engine.saliency, "CHUNK", 7)
    seen = []
    real_abs = ssu.engine.saliency._abs
    monkeypatch.setattr(ssu.engine.saliency, "_abs", lambda g: seen.append(g.numel()) or real_abs(g))
    stats = SaliencyMasker("step", density=density)(named)
    assert seen and max(seen) <= 7  # never more than one chunk of |g| (or of the mask) at a time

    gamma = topk_threshold(grads.values(), density) if density else saliency_threshold(grads.values())
    assert stats["threshold"] == gamma
    for n, p in named:
        expected = grads[n] * (grads[n].abs().float() >= gamma)  # half precision compares in float32
        assert torch.equal(bits(p.grad), bits(expected)), n
        assert torch.equal(bits(p.grad), bits(reference[n])), n
        assert p.grad.stride() == grads[n].stride()  # masked in place, not replaced
    assert stats["selected"] == sum(int(m.sum()) for m in ref_masks.values())
    assert stats["total"] == sum(g.numel() for g in grads.values())


@pytest.mark.parametrize("mode", ["step", "none", "fixed"])
def test_masker_keeps_no_full_size_tensor(mode):
    named = fake_params(torch.float32)
    masker = SaliencyMasker(mode)
    for _ in range(2):
        stats = masker(named)
        for _, p in named:
            p.grad = torch.randn_like(p) * 1e-4
    held = held_tensors(masker)
    if mode == "fixed":  # SalUn reuses its first mask: the one mask kept, one bool per entry
        assert len(held) == len(named) and all(t.dtype == torch.bool for t in held)
        assert sorted(t.numel() for t in held) == sorted(p.numel() for _, p in named)
    else:
        assert held == [] and masker.masks is None
    assert all(isinstance(v, (int, float)) for v in stats.values())
    assert all(isinstance(v, int) for v in masker.selected.values())


# --- the packed loss path ------------------------------------------------------------------


def tiny(arch: str) -> torch.nn.Module:
    """Tiny random model, weights N(0, 0.02) (the configs' initializer_range), float32, no dropout."""
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    return (GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM)(cfg).float().train()


def micro_batch() -> list[tuple[Encoded, int]]:
    """Windows with prompts of 9, 4 and 6 tokens (learning + 2 random-label rows each) and a
    retain row with a 5-token prompt: rows of different widths, right-padded."""
    rng = random.Random(0)

    def seq(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    prompts, conts = [seq(n) for n in (9, 4, 6)], [seq(n) for n in (5, 7, 3, 6)]
    rows = [(Encoded(p + conts[i], len(p)), LEARN) for i, p in enumerate(prompts)]
    rows += [(Encoded(p + conts[(i + j) % 4], len(p)), RANDOM) for i, p in enumerate(prompts) for j in (1, 2)]
    return rows + [(Encoded(seq(5) + seq(4), 5), RETAIN)]


def loss_and_grads(model, nll_fn, batch) -> tuple[torch.Tensor, torch.Tensor, float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    nll, mask = nll_fn(model, batch)
    loss = sum(w * group_mean_nll(nll, mask, batch, g) for g, w in ((LEARN, 1.0), (RANDOM, 0.5), (RETAIN, 1.0)))
    loss.backward()
    return nll.detach(), mask, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def full_logits_nll(model, batch):
    """The packed path as it was: logits at every position."""
    return token_nll(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_path_computes_only_the_needed_logits_with_the_full_loss_and_gradients(arch):
    model, rows = tiny(arch), micro_batch()
    batch = make_batch(rows, PAD, share_prompts=False)
    width = batch.input_ids.size(1)
    assert batch.label_start == 4  # the shortest prompt
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append((kwargs.get("logits_to_keep"),
                                                                           out.logits.shape)), with_kwargs=True)
    nll, mask, loss, grads = loss_and_grads(model, forward_nll, batch)
    # The logit predicting the first label (column 4) sits at position 3: positions 3.. are kept.
    assert seen == [(width - 3, (len(rows), width - 3, VOCAB))]
    ref_nll, ref_mask, ref_loss, ref_grads = loss_and_grads(model, full_logits_nll, batch)
    assert nll.shape == ref_nll.shape == (len(rows), width - 1)  # same layout, by position
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=1e-6)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for n, g in ref_grads.items():
        scale = g.abs().max().clamp(min=1e-12)
        assert float((grads[n] - g).abs().max() / scale) < 1e-5, n


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kl_logits_come_from_the_labelled_positions_only(arch):
    """``kl``'s (and ``logit-margin``'s) labelled logits: the LM head from the first position
    that predicts a label, float32 only where a label is -- the same rows as every position's."""
    from ssu.regularizers.kl import labelled_logits

    model, rows = tiny(arch), micro_batch()
    batch = make_batch(rows, PAD)
    width = batch.input_ids.size(1)
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("logits_to_keep")),
                                with_kwargs=True)
    got = labelled_logits(model, batch)
    assert seen == [width - 3]
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    want = full[batch.labels[:, 1:] != -100]
    assert got.dtype == torch.float32 and got.shape == want.shape == (int((batch.labels != -100).sum()), VOCAB)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_models_without_logits_to_keep_get_full_logits_aligned_the_same():
    model, rows = tiny("llama"), micro_batch()

    class LogitsOnly(torch.nn.Module):  # forward(input_ids, attention_mask) only
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)

    batch = make_batch(rows, PAD)
    with torch.no_grad():
        nll_a, mask_a = forward_nll(LogitsOnly(), batch)
        nll_b, mask_b = forward_nll(model, batch)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(nll_a, nll_b, rtol=1e-6, atol=1e-6)


def test_batch_label_start_is_derived_from_labels_and_travels():
    batch = make_batch(micro_batch(), PAD)
    assert batch.label_start == 4 and batch.to("cpu").label_start == 4
    labels = torch.full((2, 5), -100)
    labels[1, 3:] = 7
    direct = Batch(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), labels,
                   torch.tensor([LEARN, LEARN]))
    assert direct.label_start == 3
    empty = Batch(direct.input_ids, direct.attention_mask, torch.full((2, 5), -100), direct.group)
    assert empty.label_start == 5  # nothing labelled: no position is needed
    with torch.no_grad():
        nll, mask = forward_nll(tiny("gpt2"), empty)
    assert nll.shape == (2, 4) and not mask.any() and not nll.any()


# --- the optimizer -------------------------------------------------------------------------


def test_finetune_runs_adamw_per_tensor(synthetic_world, monkeypatch):
    """torch's default multi-tensor AdamW on CUDA takes sqrt of all second moments at once,
    a transient copy of all of them; the fine-tune must ask for the per-tensor loop."""
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    tok = load_tokenizer(str(synthetic_world.memorized))
    fs = forget_set_of(synthetic_world.prepared, 1, tok, k_random=1, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(synthetic_world.memorized), dtype=torch.float32)
    stats = finetune(model, make_method("ssu", epsilon=0.5), fs, train_settings(lr=1e-5, epochs=1, batch_size=2))
    assert stats.optimizer_steps == 3
    assert len(made) == 1 and made[0].get("foreach") is False and made[0].get("weight_decay") == 0.0


@pytest.mark.parametrize("saliency", ["step", "fixed"])
def test_finetune_releases_the_optimizer(synthetic_world, monkeypatch, saliency):
    """AdamW's moments are 8 bytes per weight: held past the fine-tune they sit beside the step's
    vector (at the 1B shape on an H200 plain ssu's step peaked at 20.05 bytes per parameter: the
    weights, the moments and two copies of the change). Mode "fixed" hands the optimizer to the
    masker, which reads its mask from the moments -- and must let go of it too."""
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    tok = load_tokenizer(str(synthetic_world.memorized))
    fs = forget_set_of(synthetic_world.prepared, 1, tok, k_random=1, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(synthetic_world.memorized), dtype=torch.float32)
    result = finetune(model, make_method("ssu", epsilon=0.5, saliency=saliency), fs,
                      train_settings(lr=1e-5, epochs=1, batch_size=2))
    gc.collect()
    assert result.optimizer_steps == 3 and len(made) == 1
    assert made[0]() is None, "the fine-tune's AdamW outlives it"
    assert result.masker.optimizer is None
