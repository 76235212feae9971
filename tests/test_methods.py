"""The unlearning methods on a tiny random GPT-2: each loss moves the forget set the intended way.

The toy world (tests/toy.py): a hand-built forget set of random token sequences driven
through the real engine. Suppression's on-policy rollouts are tests/test_rollouts.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_method
from toy import PAD, VOCAB, ce, memorize_toy, toy_world, train

from ssu.engine.losses import LEARN, RETAIN, forward_nll, make_batch, sequence_logprob
from ssu.errors import SSUError
from ssu.methods import METHODS

ASCENT = ["ga", "gd", "npo", "npo-gdr"]
NEGATED = ["ssu", "ssu-no-random-labels", "ssu-no-saliency", "tv"]


@pytest.fixture(scope="module")
def world():
    return toy_world()


def apply_stored(method, start, ft):
    """theta_t = theta_{t-1} + sign * (theta_ft - theta_{t-1}), as the stack does with alpha = 1."""
    out = copy.deepcopy(start)
    with torch.no_grad():
        for (_, p), (_, q), (_, s) in zip(out.named_parameters(), ft.named_parameters(), start.named_parameters()):
            p.copy_(s + method.sign * (q - s))
    return out


def changed(a, b) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ASCENT)
def test_ascent_methods_raise_forget_ce_and_store_the_change_as_is(name, world):
    method, start, ft = train(name, world)
    fs = world[0]
    assert method.sign == +1 and method.saliency_mode == "none" and not method.uses_random_labels
    assert changed(start, ft)
    assert ce(ft, fs.learn) > ce(start, fs.learn) + 0.05
    assert ce(apply_stored(method, start, ft), fs.learn) == pytest.approx(ce(ft, fs.learn), abs=1e-5)


@pytest.mark.parametrize("name", NEGATED)
def test_negated_methods_learn_then_store_the_negated_change(name, world):
    method, start, ft = train(name, world, lr=3e-3)
    fs = world[0]
    assert method.sign == -1
    assert changed(start, ft)
    before = ce(start, fs.learn)
    assert ce(ft, fs.learn) < before - 0.05  # the fine-tune learns the book ...
    assert ce(apply_stored(method, start, ft), fs.learn) > before + 0.05  # ... and the negation removes it


def test_gd_retain_term_keeps_retain_ce_lower_than_ga(world):
    fs = world[0]
    _, start, ga = train("ga", world)
    _, _, gd = train("gd", world)
    assert ce(gd, fs.retain) < ce(ga, fs.retain)
    _, _, npo = train("npo", world)
    _, _, npo_gdr = train("npo-gdr", world)
    assert ce(npo_gdr, fs.retain) < ce(npo, fs.retain)


def test_retain_weight_zero_makes_gd_equal_ga(world):
    fs, model = world
    batch = make_batch([(e, LEARN) for e in fs.learn] + [(e, RETAIN) for e in fs.retain], PAD)
    ga = make_method("ga").loss(model, batch)[0]
    gd = make_method("gd", retain_weight=0.0).loss(model, batch)[0]
    assert gd.item() == pytest.approx(ga.item(), abs=1e-6)


@pytest.mark.parametrize("beta", [0.4, 0.1])
def test_npo_at_the_reference_is_two_over_beta_log_two(beta, world):
    fs, model = world
    batch = make_batch([(e, LEARN) for e in fs.learn] + [(e, RETAIN) for e in fs.retain], PAD)
    npo = make_method("npo", beta=beta)
    loss, stats = npo.loss(model, batch, reference=copy.deepcopy(model))
    # log sigma(0) = -log 2, so L = -(2/beta) * (-log 2); by hand for beta = 0.4: 5 * 0.693147 = 3.465736.
    assert loss.item() == pytest.approx(2.0 / beta * math.log(2.0), rel=1e-6)
    assert stats["log_ratio"] == 0.0


def test_npo_gradient_at_the_reference_is_the_mean_sequence_logprob_gradient(world):
    # dL/dtheta at ratio 0 = 2 * sigma(0) * grad(mean log pi) = grad(mean log pi): NPO starts as
    # ascent on *sequence* log-probabilities (sums over tokens), not on the per-token mean.
    fs, base = world
    model = copy.deepcopy(base).requires_grad_(True)
    batch = make_batch([(e, LEARN) for e in fs.learn], PAD)
    make_method("npo").loss(model, batch, reference=copy.deepcopy(base))[0].backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nll, _ = forward_nll(model, batch)
    sequence_logprob(nll, batch.group == LEARN).mean().backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)


def test_npo_without_reference_is_a_clear_error(world):
    fs, model = world
    batch = make_batch([(e, LEARN) for e in fs.learn], PAD)
    with pytest.raises(SSUError, match="reference"):
        make_method("npo").loss(model, batch)


def test_registry_lists_every_method_and_rejects_unknown_names():
    names = METHODS.names()
    assert set(ASCENT + NEGATED) <= set(names)
    assert METHODS.get("gd").needs_retain and METHODS.get("npo").needs_reference
    with pytest.raises(SSUError) as err:
        METHODS.get("nonsense")
    assert all(n in str(err.value) for n in names)
    with pytest.raises(SSUError, match="Did you mean 'npo'"):
        METHODS.get("npoo")


def test_suppress_at_the_reference_is_the_mean_of_minus_log_one_minus_p_label(world):
    # KL(q ‖ p) with q = p without the label, renormalised: Σ_{v≠y} q_v log(q_v / p_v) = -log(1 - p_y).
    fs, model = world
    batch = make_batch([(e, LEARN) for e in fs.learn] + [(e, RETAIN) for e in fs.retain], PAD)
    loss, _ = make_method("suppress", reference="model").loss(model, batch, reference=copy.deepcopy(model))
    learn = make_batch([(e, LEARN) for e in fs.learn], PAD)
    with torch.no_grad():
        nll, mask = forward_nll(model, learn)
    by_hand = (-torch.log1p(-torch.exp(-nll[mask]))).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)  # the retain rows count nothing


def test_suppress_target_drops_the_label_in_float32_for_bf16_logits():
    from ssu.methods.targets import suppressed_target

    torch.manual_seed(0)
    logits = (torch.randn(6, VOCAB) * 4).to(torch.bfloat16)
    labels = logits.float().argmax(-1)  # a memorised token: the reference's favourite
    logq = suppressed_target(logits, labels)
    assert logq.dtype == torch.float32
    q = logq.exp()
    assert (q.gather(-1, labels[:, None]) == 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(6))
    # every other token keeps the reference's odds against every other
    p = torch.softmax(logits.float(), -1)
    keep = torch.ones_like(p, dtype=torch.bool).scatter(-1, labels[:, None], False)
    torch.testing.assert_close(q[keep], (p / (1 - p.gather(-1, labels[:, None])))[keep], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def memorized(world):
    return memorize_toy(world)


def test_suppress_moves_the_book_off_its_tokens_and_keeps_the_other_candidates(memorized):
    fs, start = memorized
    assert ce(start, fs.learn) < 0.2 and ce(start, fs.retain) < 0.2
    method, _, ft = train("suppress", memorized, lr=3e-3, reference="model")
    assert method.sign == +1 and method.needs_reference and method.saliency_mode == "none"
    assert ce(ft, fs.learn) > ce(start, fs.learn) + 1.0  # the labels lost their mass ...
    batch = make_batch([(e, LEARN) for e in fs.learn], PAD)
    before = method.loss(start, batch, reference=start)[0].item()
    assert method.loss(ft, batch, reference=start)[0].item() < 0.7 * before  # toward the target (4.8 -> 2.7)
    # per unit of forget CE it moves the retain text less than half as far as gradient ascent does
    # (measured: 0.31 against 1.0)
    _, _, ga = train("ga", memorized, lr=3e-3, epochs=3)

    def spill(model) -> float:
        return (ce(model, fs.retain) - ce(start, fs.retain)) / (ce(model, fs.learn) - ce(start, fs.learn))

    assert ce(ga, fs.learn) > ce(start, fs.learn) + 0.5
    assert spill(ft) < 0.5 * spill(ga)
    assert make_method("suppress", saliency_density=0.02).saliency_mode == "step"


def test_suppress_cached_target_is_the_exact_kl_when_k_covers_the_vocabulary(memorized):
    fs, start = memorized
    model = copy.deepcopy(start)
    with torch.no_grad():  # somewhere off θ_{t-1}, so the KL is not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = make_batch([(e, LEARN) for e in fs.learn] + [(e, RETAIN) for e in fs.retain], PAD)
    exact = make_method("suppress", reference="model").loss(model, batch, reference=start)[0]
    full = make_method("suppress", topk=VOCAB)
    assert not full.needs_reference
    full.prepare(start, fs)
    assert full.loss(model, batch)[0].item() == pytest.approx(exact.item(), rel=1e-5)
    small = make_method("suppress", topk=8)
    small.prepare(start, fs)
    assert exact.item() * 0.5 < small.loss(model, batch)[0].item() <= exact.item() + 1e-6  # merging outcomes


def test_suppress_cached_trains_like_the_reference_model(memorized):
    fs, start = memorized
    _, _, cached = train("suppress", memorized, lr=3e-3)
    _, _, exact = train("suppress", memorized, lr=3e-3, reference="model")
    assert abs(ce(cached, fs.learn) - ce(exact, fs.learn)) < 0.05 * ce(exact, fs.learn)
    with pytest.raises(SSUError, match="prepared"):
        make_method("suppress").loss(start, make_batch([(e, LEARN) for e in fs.learn], PAD))


def test_suppress_fixed_saliency_moves_only_its_fraction_of_the_weights(memorized):
    """A mask per optimizer step moves a union of masks over the step; ``saliency: fixed`` moves
    exactly the first step's top fraction (weight decay is off, so nothing outside it changes)."""
    _, start = memorized
    before = dict(start.named_parameters())

    def moved(model) -> float:
        changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
        return changed / sum(p.numel() for p in start.parameters())

    _, _, per_step = train("suppress", memorized, lr=3e-3, reference="model", saliency_density=0.05)
    method, _, fixed = train("suppress", memorized, lr=3e-3, reference="model", saliency_density=0.05,
                             saliency="fixed")
    assert method.saliency_mode == "fixed"
    assert 0 < moved(fixed) <= 0.05 + 1e-3 < moved(per_step)


def test_suppress_teacher_margin_trains_every_book_token_under_the_runner_up(memorized):
    """``teacher_loss: margin``: on the book's own windows, max(0, m + z_label − max z_other) at every
    continuation token (no cache, no reference); trained, the book's tokens sit more than m under the
    best other candidate under teacher forcing -- where the KL only bounds p(label)."""
    fs, start = memorized
    method = make_method("suppress", teacher_loss="margin", margin=2.0)
    assert not method.needs_reference
    method.prepare(start, fs)
    assert method.cache is None
    batch = make_batch([(e, LEARN) for e in fs.learn], PAD)

    def gaps(model) -> torch.Tensor:
        out = []
        for e in fs.learn:
            with torch.no_grad():
                lg = model(torch.tensor([e.ids])).logits[0, e.n_prompt - 1 : -1].float()
            tok = torch.tensor(e.continuation_ids)[:, None]
            out.append(lg.gather(-1, tok).squeeze(-1) - lg.scatter(-1, tok, float("-inf")).amax(-1))
        return torch.cat(out)

    want = (2.0 + gaps(start)).clamp(min=0).mean()  # the toy's windows have equal lengths: the token mean
    assert method.loss(start, batch)[0].item() == pytest.approx(want.item(), rel=1e-4)
    _, _, trained = train("suppress", memorized, lr=5e-3, epochs=15, teacher_loss="margin", margin=2.0)
    assert gaps(start).min().item() > 0 and gaps(trained).max().item() < -2.0  # measured: 5.2 -> -6.3 at the most
    with pytest.raises(SSUError, match="teacher_loss kl or margin"):
        make_method("suppress", teacher_loss="hinge")
