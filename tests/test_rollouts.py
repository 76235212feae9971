"""Suppression's on-policy rollouts (ssu/methods/rollouts.py) on the toy world (tests/toy.py):
which decoded tokens are flagged as the book's, what a flagged token is trained toward, and
that each moves the model's own output the intended way."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import make_method
from toy import PAD, memorize_toy, toy_world, train

from ssu.engine.encoding import Encoded
from ssu.engine.losses import LEARN, ROLLOUT, make_batch
from ssu.errors import SSUError


@pytest.fixture(scope="module")
def memorized():
    return memorize_toy(toy_world())


class OddPieces:
    """A tokenizer's view of the toy vocabulary: odd ids continue the word before them ("x7"),
    even ids begin one (" w8"); every token ends with a letter or digit."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self):
        return self.vocab

    def decode(self, ids):
        return "".join(f"x{i}" if i % 2 else f" w{i}" for i in ids)


def test_book_flags_mark_the_tokens_that_complete_a_book_ngram_no_retain_row_has():
    from ssu.methods.rollouts import book_flags, ngrams, slid

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
    from ssu.methods.rollouts import book_flags, ngrams, word_joins

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
    from ssu.methods.rollouts import book_flags, ngrams, rollout

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

    with pytest.raises(SSUError, match="need the forget set's tokenizer"):
        make_method("suppress", rollout_every=1, word_starts=True).prepare(start, fs)
    flagged = {}
    for words in (False, True):
        method = make_method("suppress", rollout_every=1, ngram=3, word_starts=words)
        method.prepare(start, dataclasses.replace(fs, tokenizer=OddPieces(start.config.vocab_size)))
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
    from ssu.methods.rollouts import book_next, book_targets

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


def test_rollout_kl_at_the_decoding_model_is_unlikelihood_and_each_validates(memorized):
    """KL(q ‖ p) = −log(1 − p(t)) when q is p without t: at the model that decoded, the two
    rollout losses are the same number (any topk: merging outcomes keeps it exact there)."""
    fs, start = memorized
    from ssu.methods.rollouts import flagged_targets

    losses = {}
    for loss, k in (("unlikelihood", 64), ("kl", 64), ("kl", 4)):
        method = make_method("suppress", rollout_every=1, ngram=3, teacher_weight=0.0, rollout_loss=loss, topk=k)
        method.prepare(start, fs)
        method.start_epoch(start, fs, 1)
        roll = method.rollouts[0][0]
        half = torch.tensor([True, False] * 4)  # half the decoded tokens flagged, and the targets built for them
        method.flags[tuple(roll.ids)] = half
        if loss == "kl":
            method.rollout_q[tuple(roll.ids)] = flagged_targets(start, [roll], [half], PAD, k)[0]
        losses[loss, k] = method.loss(start, make_batch([(fs.learn[0], LEARN), *method.rows(0)], PAD))[0].item()
    assert losses["kl", 64] == pytest.approx(losses["unlikelihood", 64], rel=1e-5)
    assert losses["kl", 4] == pytest.approx(losses["unlikelihood", 64], rel=1e-5)
    for bad in ({"rollout_loss": "hinge"}, {"run_on_weight": 0.0}, {"run_on_weight": 1.5},
                {"rollout_loss": "kl", "rollout_target": "book"}):
        with pytest.raises(SSUError, match="rollout_loss"):
            make_method("suppress", rollout_every=1, **bad)
    with pytest.raises(SSUError, match="need the forget set's tokenizer"):
        make_method("suppress", rollout_every=1, rollout_loss="kl", run_on_weight=0.1).prepare(start, fs)


def test_run_on_weight_takes_the_freed_mass_off_pieces_that_glue_onto_the_word(memorized):
    """In the target, a piece that would continue the word before a flagged word start keeps
    ``run_on_weight`` of its odds against the word starts; trained, the mass the book's tokens
    lose goes less to such pieces (measured on the toy world: 0.12 of it against 0.40 under
    unlikelihood, 0.35 under the unweighted KL; 0.50 at the start, where half the vocabulary is pieces)."""
    from ssu.methods.rollouts import flagged_targets, word_joins

    fs, start = memorized
    tok = OddPieces(start.config.vocab_size)
    joins = word_joins(tok)
    rows = [fs.learn[0]]
    flags = [torch.tensor([True] * 8)]
    vocab = start.config.vocab_size
    (ids1, logq1, labels), = flagged_targets(start, rows, flags, PAD, vocab, joins, 1.0)
    (ids2, logq2, _), = flagged_targets(start, rows, flags, PAD, vocab, joins, 0.01)
    q1 = torch.full((8, vocab), float("-inf")).scatter(-1, ids1.long(), logq1[:, :-1])
    q2 = torch.full((8, vocab), float("-inf")).scatter(-1, ids2.long(), logq2[:, :-1])
    assert (q1.gather(-1, labels[:, None]) == float("-inf")).all()  # the flagged token is out of both
    odd = torch.arange(vocab) % 2 == 1
    for j, t in enumerate(labels.tolist()):  # every token ends with a letter: a flagged word start glues
        if t % 2 == 0:  # pieces moved by log(0.01) against the word starts, up to the renormalisation
            d = q2[j] - q1[j]
            torch.testing.assert_close(d[odd].max() - d[~odd & torch.isfinite(d)].max(),
                                       torch.tensor(torch.log(torch.tensor(0.01)).item()), rtol=0, atol=1e-4)
        else:  # a flagged piece is mid-word: its target is left alone
            shift = (q2[j] - q1[j])[torch.isfinite(q1[j])]
            torch.testing.assert_close(shift, torch.zeros_like(shift), rtol=0, atol=1e-5)
    world = (dataclasses.replace(fs, tokenizer=tok), start)
    batch = make_batch([(e, LEARN) for e in fs.learn], PAD)

    def run_on_share(model) -> float:
        """Of the mass off the book's token at its word starts, the share on pieces."""
        with torch.no_grad():
            p = torch.softmax(model(batch.input_ids).logits[:, :-1].float(), -1)
        want = batch.labels[:, 1:]
        at = (want != -100) & (want % 2 == 0)
        freed = p[at].scatter(-1, want[at][:, None], 0.0)
        return (freed[:, odd].sum(-1) / freed.sum(-1)).mean().item()

    share = {w: run_on_share(train("suppress", world, lr=2e-3, epochs=5, rollout_every=1, ngram=3, teacher_weight=0.0,
                                   **({"rollout_loss": "kl", "run_on_weight": w} if w else {}))[2])
             for w in (None, 0.01)}
    assert share[0.01] < 0.5 * share[None]


def test_margin_is_the_hinge_under_the_runner_up_and_trains_the_flagged_tokens_under_it(memorized):
    """``rollout_loss: margin``: max(0, m + z_token − max z_other) at the flagged tokens, over the
    rollouts' tokens; trained on fixed flags (the memorised model's decodes, kept for the whole run),
    every flagged token ends more than m under the best other candidate."""
    fs, start = memorized
    method = make_method("suppress", rollout_every=1, ngram=3, teacher_weight=0.0, rollout_loss="margin", margin=4.0)
    method.prepare(start, fs)
    method.start_epoch(start, fs, 1)
    roll = method.rollouts[0][0]
    method.flags[tuple(roll.ids)] = torch.tensor([True, False] * 4)
    with torch.no_grad():
        lg = start(torch.tensor([roll.ids])).logits[0, 7:15].float()
    tok = torch.tensor(roll.ids[8:])[:, None]
    gap = lg.gather(-1, tok).squeeze(-1) - lg.scatter(-1, tok, float("-inf")).amax(-1)
    want = ((4.0 + gap).clamp(min=0) * torch.tensor([1.0, 0.0] * 4)).sum() / 8
    got = method.loss(start, make_batch([(fs.learn[0], LEARN), *method.rows(0)], PAD))
    assert got[0].item() == pytest.approx(want.item(), rel=1e-5) and want.item() > 4 * 4 / 8  # memorised: gap > 0
    for bad in ({"margin": 0.0}, {"margin": -1.0}):
        with pytest.raises(SSUError, match="margin > 0"):
            make_method("suppress", rollout_every=1, rollout_loss="margin", **bad)

    # rollouts only at epoch 1 (every 100 epochs): the flags stay the memorised decodes, i.e. the book itself
    trained = train("suppress", memorized, lr=5e-3, epochs=15, rollout_every=100, ngram=3, teacher_weight=0.0,
                    rollout_loss="margin", margin=4.0)[2]

    def gaps(model) -> torch.Tensor:  # at the flagged positions: every continuation token after the first two
        out = []
        for e in fs.learn:
            with torch.no_grad():
                lg = model(torch.tensor([e.ids])).logits[0, e.n_prompt + 1 : -1].float()
            tok = torch.tensor(e.continuation_ids[2:])[:, None]
            out.append(lg.gather(-1, tok).squeeze(-1) - lg.scatter(-1, tok, float("-inf")).amax(-1))
        return torch.cat(out)

    assert gaps(start).min().item() > 0 and gaps(trained).max().item() < -4.0  # measured: -8.1 at the most


def adversary_losses(memorized, rhos, parts: bool = False, **args) -> dict[float, float]:
    """The loss of ``suppress`` with ``adversary`` ρ (and ``args``) on the memorised toy's first
    window and its rollouts, per ρ (``parts``: its parts); checks that gradients reach the weights
    and leave them unchanged."""
    fs, start = memorized
    model = copy.deepcopy(start).requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = {}
    for rho in rhos:
        method = make_method("suppress", **{"rollout_every": 1, "ngram": 3, "teacher_weight": 0.0, "adversary": rho,
                                            **args})
        method.prepare(model, fs)
        method.start_epoch(model, fs, 1)
        model.zero_grad()
        loss, got = method.loss(model, make_batch([(fs.learn[0], LEARN), *method.rows(0)], PAD))
        loss.backward()
        losses[rho] = got if parts else loss.item()
        assert sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None) > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    return losses


def test_adversary_takes_the_rollout_term_one_relearning_step_away(memorized):
    """``adversary`` ρ: the rollout term at θ + ρ g / ‖g‖ (g: the gradient of the flagged tokens'
    log-probability). ρ → 0 is the term at θ; a small ρ moves toward the book, so the term rises;
    the weights themselves are left as they were, and the gradient reaches them through θ + δ."""
    losses = adversary_losses(memorized, (0.0, 1e-7, 0.1))
    assert losses[1e-7] == pytest.approx(losses[0.0], rel=1e-5) and losses[0.1] > losses[0.0] + 0.1  # 5.03 -> 5.28
    with pytest.raises(SSUError, match="adversary must be >= 0"):
        make_method("suppress", rollout_every=1, adversary=-0.1)
    for bad in ({"adversary_step": "linf"}, {"adversary_on": "prompt"}, {"adversary_terms": []},
                {"adversary_terms": ["retain"]}):
        with pytest.raises(SSUError, match="adversary_step l2 or sign"):
            make_method("suppress", rollout_every=1, adversary=0.1, **bad)


def test_relearned_params_step_toward_the_objective_by_norm_or_by_sign():
    """``l2`` moves the weights by ρ in norm along g, ``sign`` moves every weight by ρ (AdamW's
    first step); either raises the objective, and in bf16 (N(0, 0.02) weights, ρ 1e-3 and the
    attacker's lr 1e-5) the moved weight is the float32 sum rounded once -- a 1e-5 step is below
    bf16's spacing at 0.02 (1.2e-4) and leaves most weights where they were, as it would the attacker's."""
    from ssu.methods.adversary import relearned_params

    torch.manual_seed(0)
    x, y = torch.randn(16, 32), torch.randint(0, 8, (16,))
    for dtype in (torch.float32, torch.bfloat16):
        model = torch.nn.Linear(32, 8).to(dtype)
        torch.nn.init.normal_(model.weight, std=0.02)

        def objective(params=None, model=model, dtype=dtype):
            out = model(x.to(dtype)) if params is None else torch.func.functional_call(model, params, (x.to(dtype),))
            return out.float().log_softmax(-1).gather(-1, y[:, None]).mean()

        for step, rho in (("l2", 0.1), ("sign", 1e-3), ("sign", 1e-5)):
            moved = relearned_params(model, objective(), rho, step)
            g, gb = (t.float() for t in torch.autograd.grad(objective(), [model.weight, model.bias]))
            scale = rho / torch.sqrt((g**2).sum() + (gb**2).sum())
            want = model.weight.float() + (rho * g.sign() if step == "sign" else g * scale)
            assert torch.equal(moved["weight"], want.to(dtype))  # the float32 sum, rounded once
            changed = (moved["weight"] != model.weight).float().mean().item()
            if dtype == torch.float32 and step == "l2":
                delta = torch.cat([(moved[n].float() - p.float()).flatten() for n, p in model.named_parameters()])
                assert delta.norm().item() == pytest.approx(rho, rel=1e-4)
            if dtype == torch.float32 and step == "sign":
                assert (moved["weight"] - model.weight).abs().sub(rho).abs().max().item() < 1e-8
            if step != "sign" or rho > 1e-4 or dtype == torch.float32:
                assert changed > 0.9 and objective(moved).item() > objective().item()
            else:
                assert changed < 0.5  # bf16: most of a 1e-5 step rounds away (measured: 0.14 of them change)
    flat = torch.nn.Linear(4, 2)
    assert relearned_params(flat, (flat.weight * 0).sum(), 0.1) is None  # no direction: the caller keeps θ


def test_the_sign_adversary_on_the_book_raises_the_rollout_term_and_leaves_the_weights(memorized):
    """``adversary_step: sign`` with ``adversary_on: book``: the rollout term at the weights one AdamW
    step of the relearning attacker away (g from the book's own continuations) is higher than at θ --
    the book comes back there -- and θ is untouched."""
    losses = adversary_losses(memorized, (0.0, 1e-3), adversary_step="sign", adversary_on="book")
    assert losses[1e-3] > losses[0.0]  # measured: 5.033 -> 5.068


def test_the_adversary_takes_the_teacher_hinge_there_when_asked(memorized):
    """``adversary_terms: [teacher]``: the teacher-forced hinge on the book's own windows is taken at
    the weights one relearning step away (g from the book's continuations), where the book's tokens
    are further over their runners-up -- the hinge rises -- while the rollout term stays the one at θ;
    by default (``[rollout]``) the hinge is θ's. A hinge met at θ keeps a gradient this way."""
    args = {"adversary_on": "book", "teacher_weight": 1.0, "teacher_loss": "margin", "margin": 4.0}
    plain = adversary_losses(memorized, (0.0, 0.1), parts=True, **args)
    teacher = adversary_losses(memorized, (0.1,), parts=True, adversary_terms=["teacher"], **args)[0.1]
    both = adversary_losses(memorized, (0.1,), parts=True, adversary_terms=["rollout", "teacher"], **args)[0.1]
    assert plain[0.1]["suppress_hinge"] == pytest.approx(plain[0.0]["suppress_hinge"], rel=1e-6)
    assert teacher["suppress_hinge"] > plain[0.0]["suppress_hinge"] + 0.1  # measured: 10.50 -> 10.67
    assert teacher["rollout_ul"] == pytest.approx(plain[0.0]["rollout_ul"], rel=1e-6)
    assert both["suppress_hinge"] == pytest.approx(teacher["suppress_hinge"], rel=1e-6)
    assert both["rollout_ul"] == pytest.approx(plain[0.1]["rollout_ul"], rel=1e-6)
    assert plain[0.1]["rollout_ul"] > plain[0.0]["rollout_ul"]
