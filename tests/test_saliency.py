"""Saliency thresholds and masks against brute force; what AdamW can move under each mode."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ssu.engine.saliency import (
    SaliencyMasker,
    apply_masks,
    compute_masks,
    saliency_threshold,
    topk_threshold,
)


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


def backward(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, 12), generator=gen)
    model(input_ids=ids, labels=ids).loss.backward()


@pytest.fixture
def model_with_grads():
    model = tiny_llama()
    backward(model, seed=1)
    return model


def all_abs(model) -> torch.Tensor:
    return torch.cat([p.grad.abs().flatten() for p in model.parameters() if p.grad is not None]).double()


@pytest.mark.parametrize("k", [0.0, 1.0, 2.5])
def test_threshold_equals_brute_force(model_with_grads, k):
    flat = all_abs(model_with_grads)
    brute = float(flat.mean() + k * flat.std(unbiased=False))
    gens = (p.grad for p in model_with_grads.parameters())  # a one-shot generator is enough
    assert saliency_threshold(gens, k) == pytest.approx(brute, rel=1e-6)


def test_threshold_is_stable_when_spread_is_tiny():
    t = [torch.full((1000,), 1e3, dtype=torch.float64) + torch.arange(1000) * 1e-9, torch.full((10,), 1e3)]
    flat = torch.cat([x.double() for x in t])
    assert saliency_threshold(t, 1.0) == pytest.approx(float(flat.mean() + flat.std(unbiased=False)), rel=1e-12)
    with pytest.raises(ValueError):
        saliency_threshold([torch.zeros(0)])


def test_mask_equals_brute_force(model_with_grads):
    masks = compute_masks(model_with_grads.named_parameters(), k=1.0)
    gamma = saliency_threshold([p.grad for p in model_with_grads.parameters()], 1.0)
    for name, p in model_with_grads.named_parameters():
        assert torch.equal(masks[name], p.grad.abs() >= gamma)
    frac = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.0 < frac < 0.5


def test_params_without_grad_get_no_mask(model_with_grads):
    named = dict(model_with_grads.named_parameters())
    frozen = next(iter(named))
    named[frozen].grad = None
    masks = compute_masks(named.items())
    assert frozen not in masks and len(masks) == len(named) - 1
    with pytest.raises(ValueError, match="no mask"):
        apply_masks(model_with_grads.named_parameters(), {})
    with pytest.raises(ValueError, match="unknown"):
        apply_masks([], {"nope": torch.ones(1, dtype=torch.bool)})


@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 1.0])
def test_topk_threshold_is_exact(model_with_grads, density):
    grads = [p.grad for p in model_with_grads.parameters()]
    flat = all_abs(model_with_grads).float()
    k = max(1, round(density * flat.numel()))
    thr = topk_threshold(grads, density)
    assert thr == float(torch.topk(flat, k).values[-1])  # exactly the k-th largest |g|
    selected = int((flat >= thr).sum())
    assert selected >= k and int((flat > thr).sum()) < k  # k, plus ties with the k-th value
    masks = compute_masks(model_with_grads.named_parameters(), density=density)
    assert sum(int(m.sum()) for m in masks.values()) == selected


def test_chunked_reductions_match(model_with_grads, monkeypatch):
    grads = [p.grad for p in model_with_grads.parameters()]
    expected = saliency_threshold(grads, 1.0), topk_threshold(grads, 0.05)
    monkeypatch.setattr("ssu.engine.saliency.CHUNK", 7)  # many chunks per tensor
    assert saliency_threshold(grads, 1.0) == pytest.approx(expected[0], rel=1e-12)
    assert topk_threshold(grads, 0.05) == expected[1]


def test_topk_with_ties_and_half_precision():
    t = [torch.tensor([3.0, -3.0, 2.0, 2.0, 2.0, 1.0], dtype=torch.bfloat16), torch.tensor([-2.0, 0.5])]
    assert topk_threshold(t, 0.25) == 3.0  # k = 2: both |±3|
    assert topk_threshold(t, 0.375) == 2.0  # k = 3 falls among the four 2.0s; all four are selected
    assert topk_threshold(t, 1.0) == 0.5
    with pytest.raises(ValueError):
        topk_threshold(t, 0.0)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: equal only when bit-identical (unlike ==, which equates -0.0 and 0.0)."""
    return t.contiguous().view(-1).view(torch.uint8)


def train(mode: str, steps: int = 4, from_state: bool = False, **kw):
    """A few AdamW steps (no weight decay, lr 1e-5) with the masker between backward and step.

    The masker keeps no record of its masks (a full-size union would cost 8 GB at 8B
    scale), so each step's mask is derived here from the gradient before masking --
    :func:`compute_masks` for ``"step"``, the first step's for ``"fixed"`` -- and the
    gradient AdamW then sees is checked to be exactly ``g * mask``.
    """
    model = tiny_llama()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    masker = SaliencyMasker(mode, optimizer=opt if from_state else None, **kw)
    history = []
    for s in range(steps):
        backward(model, seed=10 + s)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        fresh = mode == "step" or not history
        if fresh:
            masks = compute_masks(model.named_parameters(), **kw)
        stats = masker(model.named_parameters())
        for n, p in model.named_parameters():
            if fresh:  # the threshold reported is the one the mask was cut at
                assert torch.equal(masks[n], grads[n].abs() >= stats["threshold"]), n
            assert torch.equal(bits(p.grad), bits(grads[n] * masks[n])), n
        assert stats["selected"] == sum(int(m.sum()) for m in masks.values())
        assert masker.selected == {n: int(m.sum()) for n, m in masks.items()}
        history.append((stats, masks))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, init, masker, history


def test_step_mode_moves_only_selected_entries():
    model, init, masker, history = train("step")
    moved_total = 0
    for name, p in model.named_parameters():
        ever = torch.stack([masks[name] for _, masks in history]).any(0)  # union of the steps' masks
        same = bits(p.detach()).view(torch.int32) == bits(init[name]).view(torch.int32)
        assert torch.all(same[~ever.flatten()]), name  # never selected: bit-identical
        assert torch.all(~same[ever.flatten()]), name  # selected at some step: moved, even at lr 1e-5
        moved_total += int(ever.sum())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < moved_total < total
    assert all(0.0 < st["fraction"] < 0.5 for st, _ in history)
    first, last = history[0][1], history[-1][1]
    assert any(not torch.equal(first[n], last[n]) for n in first)  # recomputed each step
    assert masker.masks is None  # the step mode keeps no mask


@pytest.mark.parametrize("from_state", [False, True])
def test_fixed_mode_keeps_the_first_mask(from_state):
    """Kept as bools, or (given the optimizer) read back from AdamW's moments: the same masked
    gradients bit for bit at every step (``train`` checks each against the first mask)."""
    model, init, masker, history = train("fixed", steps=3, from_state=from_state)
    first = history[0][1]
    for stats, _ in history[1:]:
        assert stats["threshold"] == history[0][0]["threshold"]
        assert stats["selected"] == history[0][0]["selected"]
    for name, p in model.named_parameters():
        if not from_state:
            assert masker.masks[name].dtype == torch.bool and torch.equal(masker.masks[name], first[name])
        assert torch.equal(p.detach()[~first[name]], init[name][~first[name]])
    if from_state:
        assert masker.masks is None and not any(isinstance(v, torch.Tensor) for v in vars(masker).values())


def test_fixed_mode_from_state_needs_adam_moments():
    model = tiny_llama()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    masker = SaliencyMasker("fixed", optimizer=opt, density=0.1)
    for s in range(2):
        backward(model, seed=s)
        if s == 0:
            masker(model.named_parameters())
            opt.step()
            opt.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="Adam moments"):
        masker(model.named_parameters())


def test_none_mode_leaves_gradients_untouched(model_with_grads):
    before = {n: p.grad.clone() for n, p in model_with_grads.named_parameters()}
    masker = SaliencyMasker("none")
    assert masker(model_with_grads.named_parameters()) == {}
    for n, p in model_with_grads.named_parameters():
        assert torch.equal(bits(p.grad), bits(before[n]))
    assert masker.masks is None and masker.selected == {}  # nothing kept
    with pytest.raises(ValueError):
        SaliencyMasker("second-backward")


def test_masking_zeroes_exactly_and_uses_one_backward(model_with_grads):
    named = list(model_with_grads.named_parameters())
    before = {n: p.grad.clone() for n, p in named}
    stats = SaliencyMasker("step", k=1.0)(named)
    for n, p in named:
        keep = before[n].abs() >= stats["threshold"]
        assert torch.equal(p.grad[keep], before[n][keep])  # m ⊙ g, not g ⊙ (1 + m)
        assert bool((p.grad[~keep] == 0).all())
