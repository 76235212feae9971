"""The unlearning methods on a tiny random GPT-2: each loss moves the forget set the intended way.

Every method is driven through the real engine (``ssu.engine.finetune.finetune``) on a
hand-built forget set of random token sequences, so batching, groups and the
reference model are exercised exactly as ``ssu step`` uses them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import pytest
import torch
from conftest import make_method, train_settings
from transformers import AutoModelForCausalLM, GPT2Config

from ssu.engine.encoding import Encoded
from ssu.engine.finetune import finetune
from ssu.engine.forget_set import ForgetSet
from ssu.engine.losses import LEARN, RETAIN, ROLLOUT, forward_nll, group_mean_nll, make_batch, sequence_logprob
from ssu.errors import SSUError
from ssu.methods import METHODS

PAD, VOCAB = 0, 100
ASCENT = ["ga", "gd", "npo", "npo-gdr"]
NEGATED = ["ssu", "ssu-no-random-labels", "ssu-no-saliency", "tv"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64,
                     bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def pairs(n: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    return [Encoded(ids=[rng.randrange(2, VOCAB) for _ in range(16)], n_prompt=8) for _ in range(n)]


@pytest.fixture(scope="module")
def world():
    learn, retain = pairs(4, 1), pairs(4, 2)
    # Random labels: each prompt with the continuations of two other forget windows.
    rand = [[Encoded(learn[i].prompt_ids + learn[j].continuation_ids, 8) for j in range(4) if j != i][:2]
            for i in range(4)]
    fs = ForgetSet(step=1, books=["b"], windows=[], learn=learn, random=rand, retain=retain, pad_id=PAD)
    return fs, tiny_model()


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
    from ssu.methods.suppress import suppressed_target

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


def test_book_flags_mark_the_tokens_that_complete_a_book_ngram_no_retain_row_has():
    from ssu.methods.suppress import book_flags, ngrams, slid

    window = Encoded(list(range(1, 11)), 4)  # a rollout prompt slid 3 tokens keeps its length
    assert slid(window, 3) == Encoded([4, 5, 6, 7, 8, 9, 10], 4) and slid(window, 99).continuation_ids == [10]

    book = ngrams([Encoded([5, 6, 7, 8, 9], 2)], 3) - ngrams([Encoded([6, 7, 8], 1)], 3)
    assert book == {(5, 6, 7), (7, 8, 9)}
    # decoded 7 rejoins the book, 1 leaves it, 7 8 are not yet a run of three, 9 completes 7 8 9
    assert book_flags([5, 6, 7, 1, 7, 8, 9], 2, book, 3) == [True, False, False, False, True]
    # generic_ngram 2: "8 9" also occurs in a retain row, so 9 is the language's choice there, not the book's
    generic = ngrams([Encoded([8, 9, 3], 1)], 2)
    assert book_flags([5, 6, 7, 1, 7, 8, 9], 2, book, 3, generic, 2) == [True, False, False, False, False]


def test_word_starts_never_flag_a_piece_that_continues_a_word():
    from ssu.methods.suppress import book_flags, ngrams, word_joins

    class Pieces:  # " milit" "ism" "," " the" "ing": a word split into pieces every book shares
        text = [" milit", "ism", ",", " the", "ing"]

        def __len__(self):
            return len(self.text)

        def decode(self, ids):
            return "".join(self.text[i] for i in ids)

    joins = word_joins(Pieces())
    assert joins == ({1, 4}, {0, 1, 3, 4})
    ids = [3, 0, 1, 2, 3, 0, 4]  # " the milit ism , the milit ing"
    book = ngrams([Encoded(ids, 1)], 2)
    assert book_flags(ids, 1, book, 2) == [True] * 6
    # "ism" and "ing" continue " milit": never flagged; "," and the word starts still are
    assert book_flags(ids, 1, book, 2, joins=joins) == [True, False, True, True, True, False]
    with pytest.raises(SSUError, match="word_starts applies"):
        make_method("suppress", word_starts=True, rollout_target="book")


def test_suppress_rollout_term_is_unlikelihood_at_the_flagged_tokens_only(memorized):
    fs, start = memorized
    method = make_method("suppress", rollout_every=1, ngram=3)
    assert method.generates and make_method("suppress").rows(0) == []
    method.prepare(start, fs)
    method.start_epoch(start, fs, 1)  # the memorised model decodes its book: every token after the first two flagged
    roll, = method.rollouts[0]
    assert roll.ids == fs.learn[0].ids and method.flags[tuple(roll.ids)].tolist() == [True] * 8
    method.flags[tuple(roll.ids)] = torch.tensor([True, False] * 4)
    with_rollout = method.loss(start, make_batch([(fs.learn[0], LEARN), *method.rows(0)], PAD))
    alone = method.loss(start, make_batch([(fs.learn[0], LEARN)], PAD))[0]
    with torch.no_grad():
        logp = torch.log_softmax(start(torch.tensor([roll.ids])).logits[0, :-1].float(), -1)
    p = logp[torch.arange(7, 15), torch.tensor(roll.ids[8:])].exp()
    want = (-torch.log1p(-p) * torch.tensor([1.0, 0.0] * 4)).sum() / 8  # over all 8 rollout tokens
    assert with_rollout[0].item() == pytest.approx(alone.item() + want.item(), rel=1e-5)
    assert with_rollout[1]["rollout_book"] == pytest.approx(0.5)
    method.args.teacher_weight = 0.0  # the rollouts alone
    assert method.loss(start, make_batch([(fs.learn[0], LEARN), *method.rows(0)], PAD))[0].item() == \
        pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(SSUError, match="teacher_weight 0 needs rollouts"):
        make_method("suppress", teacher_weight=0.0)


def test_suppress_rollouts_take_the_book_out_of_the_models_own_output(memorized):
    """Teacher-forced, the target only sees the book's prefixes: a decode that leaves the book rejoins it
    (a quarter of the tokens here); trained on its own decodes as well, the model keeps far less of it."""
    from ssu.methods.suppress import book_flags, ngrams, rollout

    fs, start = memorized
    book = ngrams(fs.learn, 3) - ngrams(fs.retain, 3)

    def book_share(model) -> float:
        gen = rollout(model, [e.prompt_ids for e in fs.learn], [len(e.continuation_ids) for e in fs.learn], PAD)
        flags = [f for e, g in zip(fs.learn, gen) for f in book_flags(e.prompt_ids + g, e.n_prompt, book, 3)]
        return sum(flags) / len(flags)

    assert book_share(start) == 1.0
    teacher = book_share(train("suppress", memorized, lr=2e-3, epochs=5)[2])
    own = book_share(train("suppress", memorized, lr=2e-3, epochs=5, rollout_every=1, ngram=3)[2])
    assert teacher >= 0.15 and own <= 0.5 * teacher  # measured: 0.25 and 0.03


def test_suppress_rollout_rows_per_window_are_offsets_times_decodes(memorized):
    fs, start = memorized
    method = make_method("suppress", rollout_every=2, ngram=3, rollout_offsets=[0, 2], rollout_samples=2)
    method.prepare(start, fs)
    torch.manual_seed(0)
    method.start_epoch(start, fs, 2)  # not a rollout epoch (1, 3, 5, ...)
    assert method.rows(0) == []
    method.start_epoch(start, fs, 3)
    rows = method.rows(1)
    assert len(rows) == 6 and {g for _, g in rows} == {ROLLOUT}
    greedy, slid_greedy = rows[0][0], rows[3][0]  # per offset: the greedy decode first, then the samples
    assert greedy.ids == fs.learn[1].ids and slid_greedy.prompt_ids == fs.learn[1].ids[2:10]
    assert all(len(r.ids) == len(fs.learn[1].ids) - o for (r, _), o in zip(rows, [0] * 3 + [2] * 3))


def test_suppress_word_starts_leave_the_pieces_of_words_out_of_the_rollout_term(memorized):
    fs, start = memorized

    class OddPieces:  # odd ids continue the word before them
        def __len__(self):
            return start.config.vocab_size

        def decode(self, ids):
            return "".join(f"x{i}" if i % 2 else f" w{i}" for i in ids)

    with pytest.raises(SSUError, match="needs the forget set's tokenizer"):
        make_method("suppress", rollout_every=1, word_starts=True).prepare(start, fs)
    flagged = {}
    for words in (False, True):
        method = make_method("suppress", rollout_every=1, ngram=3, word_starts=words)
        method.prepare(start, dataclasses.replace(fs, tokenizer=OddPieces()))
        method.start_epoch(start, fs, 1)
        flagged[words] = [(t, f) for r in method.rollouts[0]
                          for t, f in zip(r.continuation_ids, method.flags[tuple(r.ids)].tolist())]
    assert any(f and t % 2 for t, f in flagged[False])  # pieces of words were flagged ...
    assert not any(f and t % 2 for t, f in flagged[True])  # ... and with word_starts none is
    assert [f for t, f in flagged[True] if t % 2 == 0] == [f for t, f in flagged[False] if t % 2 == 0]


def test_suppress_teacher_on_book_counts_the_flagged_tokens_only(memorized):
    fs, start = memorized
    everywhere = make_method("suppress", ngram=3)
    flagged = make_method("suppress", ngram=3, generic_ngram=1, teacher_on="book")
    for m in (everywhere, flagged):
        m.prepare(start, fs)
    key = tuple(fs.learn[0].ids)
    flagged.learn_flags[key] = torch.tensor([True, False] * 4)  # half the continuation is the book's
    batch = make_batch([(fs.learn[0], LEARN)], PAD)
    with torch.no_grad():
        logits = start(batch.input_ids).logits[:, :-1]
        kl = flagged.teacher_kl(logits, batch, None)
        full = everywhere.teacher_kl(logits, batch, None)
    assert 0 < kl < full
    # at θ_{t−1} the KL of a token is −log(1 − p(label)): the flagged half's sum over all 8 tokens
    p = torch.softmax(logits[0, 7:15].float(), -1)[torch.arange(8), torch.tensor(fs.learn[0].ids[8:])]
    assert kl.item() == pytest.approx((-torch.log1p(-p) * torch.tensor([1.0, 0.0] * 4)).sum().item() / 8, rel=1e-4)
    with pytest.raises(SSUError, match="teacher_on"):
        make_method("suppress", teacher_on="names")


def test_suppress_book_targets_are_what_the_book_puts_after_the_decoded_context(memorized):
    from ssu.methods.suppress import book_next, book_targets

    book = {(5, 6, 7), (7, 8, 9), (7, 8, 4)}
    assert {k: sorted(v) for k, v in book_next(book, set(), 0).items()} == {(5, 6): [7], (7, 8): [4, 9]}
    assert book_next(book, {(9,)}, 1) == {(5, 6): [7], (7, 8): [4]}  # 9 is the language's word
    fs, start = memorized
    decoded = make_method("suppress", rollout_every=1, ngram=3, teacher_weight=0.0)
    target = make_method("suppress", rollout_every=1, ngram=3, teacher_weight=0.0, rollout_target="book")
    for m in (decoded, target):
        m.prepare(start, fs)
        m.start_epoch(start, fs, 1)
    # the memorised model decodes its book, so the book's next token is the decoded one
    batch = make_batch([(fs.learn[0], LEARN), *decoded.rows(0)], PAD)
    assert target.loss(start, batch)[0].item() == pytest.approx(decoded.loss(start, batch)[0].item(), rel=1e-6)
    # off the book: 1 was decoded where the book says 7 (targeted, though not emitted); 9 completes 7 8 9
    assert book_targets([5, 6, 1, 7, 8, 2], 2, book_next({(5, 6, 7), (7, 8, 9)}, set(), 0), 3) == [7, -1, -1, 9]
