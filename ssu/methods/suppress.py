"""Suppression by distillation: θ_{t−1}'s own predictions on the book, without the book's tokens.

On every continuation token of the forget windows the model is trained toward
θ_{t−1}'s next-token distribution with the book's actual next token taken out and the
rest renormalised: L = KL(q ‖ p_θ), q = softmax(logits_{θ_{t−1}} with the label's logit
at −∞), the mean over continuation tokens. The target is what the model would say if
the verbatim continuation were not an option -- its other candidates in their own
order -- so the update only has to move probability off the memorised token and
nothing else; the ranking of every other token, and every other text, is left where
θ_{t−1} had it. This is the logit-space idea of "Who's Harry Potter?" (Eldan &
Russinovich 2023: fine-tune toward *generic* predictions on the book's text) without
its reinforced model: that model's only role there is to find which tokens the book
raised, and on a book the model has memorised that token is the label itself.

Why it was tried instead of negating a task vector: SSU's vector learns the book a
little more and is extrapolated by α (20-60 in the demo world) along every direction the
fine-tune moved, on every input; here the change is trained on the book's contexts alone
toward a bounded target. Stored as is (``sign = +1``) and scaled by the step's calibrated
α. What the teacher-forced target does not require: KL(q ‖ p_θ) = −log(1 − p_θ(label)) +
KL(q ‖ p̃_θ) (p̃: p_θ renormalised without the label), so a KL of 0.67 only bounds p(label) by
0.49 -- the label may stay the argmax. Measured in experiments/deep (demo world, seed 0 step 1):
under ``protect``'s damping of the stored change the teacher-forced target needed α 3-6; undamped
it reached the never-seen level at α 1.4 and took the books not yet removed to 0.72 of memorized;
the on-policy rollouts below alone (``teacher_weight`` 0) came to it at α 0.8 (0.20 on the audit
windows, the retrain reference 0.19) and kept them (1.00).

θ_{t−1}'s predictions, by ``reference``: ``model`` takes them from the step's frozen reference
(a copy of the model under a full fine-tune -- 2 to 4 bytes per parameter -- the adapter
switched off under LoRA); ``cached`` (default) computes the target once before training
(:meth:`Suppress.prepare`) on the book's windows, each position's ``topk`` most likely
tokens of q plus the label and one bucket for the rest, and takes the KL over those k + 2
outcomes: no copy; exact when k covers the vocabulary, a lower bound of the full KL otherwise
(merging outcomes never raises a KL). Its size is windows × tokens × (8k + 8) bytes -- one
book, independent of the model's size.

On-policy rollouts (``rollout_every``: every that many epochs, from the first): the model as it
is then decodes each forget prompt greedily for the continuation's length (and the prompt slid
``rollout_offsets`` tokens into its window, so removal is not learnt at one prompt alone; with
``rollout_samples``, also samples: what a sampling extractor would draw), and wherever a
decoded token completes an ``ngram``-token run of the book (one of the step's forget windows'
n-grams that no retain row contains: the owner's other text marks what is not the book's own;
with ``generic_ngram`` k, also not when the token's own last k tokens occur in a retain row --
"into the" is the language's choice, not the book's, and training "the" down there reaches every
text) it is trained down by unlikelihood, −log(1 − p(token)) (Welleck et al. 2020), on the decoded
context. Teacher-forced, the target only ever sees the book's own prefixes; a continuation that
leaves the book by one token and rejoins it at the next is what keeps greedy ROUGE-L up, and
only the model's own output shows where it rejoins. The rollout rows (group ``ROLLOUT``) ride in
the window's micro-batch; their term is the mean over the rollout's tokens, so it fades as the
model stops reproducing the book. With ``rollout_target: book`` the token trained down at a
decoded position is the one the book puts after the context's last n − 1 tokens, wherever they
are one of its runs -- emitted or not, so the pressure does not stop the moment the token loses
the argmax. With ``word_starts`` only a token that begins a word is flagged (:func:`word_joins`):
the pieces of a rare word are shared by every book. With ``rollout_loss: kl`` a flagged token is
trained toward the decoding model's own distribution at that context without it (and, with
``run_on_weight``, without the pieces that would glue onto the word before) instead of by
unlikelihood: the same loss at the decoding model, but the freed mass has a place to go
(ssu/methods/rollouts.py says why). With ``rollout_loss: margin`` a flagged token is trained until
its logit is ``margin`` under the best other candidate's, max(0, m + z_token − max z_other) (a
hinge on the log-odds against the runner-up): unlikelihood's gradient is p(token), which fades
once the token drops just under the next candidate -- where six relearning steps found it again
(experiments/deep, "On-policy removal"); the hinge keeps pushing until the gap is m nats, and with
``rollout_target: book`` also where the model no longer emits the token; ``teacher_loss: margin`` puts
the same hinge on the book's own windows, teacher-forced, in place of the KL (with ``teacher_on: book``
at the tokens rollouts would flag): a removed book whose greedy decode leaves it early can keep most
of its tokens first under its true prefixes, which a few relearning steps bring back. ``saliency_density`` d
keeps the top d of |grad| at every optimizer step (``saliency: step``; over a step the masks'
union is wider: at d 0.05, 40 % of a Gutenberg step's weights moved) or the first optimizer
step's top d for the whole step (``fixed``, SalUn's mode: exactly d of the weights move; the
mask read back from AdamW's moments, nothing held). Decoding needs the whole model (not under FSDP).

Written here because no kept library has it: open-unlearning's methods (GradDiff, NPO,
SimNPO, DPO with refusals, RMU) train toward ascent, preferences or a steering vector,
not toward the model's own distribution with the forget token removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssu.engine.encoding import Encoded
from ssu.engine.losses import (
    IGNORE_INDEX,
    LEARN,
    ROLLOUT,
    Batch,
    Row,
    group_mean_nll,
    labelled_logits,
)
from ssu.errors import SSUError
from ssu.methods.adversary import STEPS, relearned_params
from ssu.methods.base import METHODS, UnlearningMethod
from ssu.methods.rollouts import book_flags, book_next, book_targets, flagged_targets, ngrams, rollout, slid, word_joins
from ssu.methods.targets import cached_kl, cached_target, margin_hinge, suppression_kl


@dataclass
class SuppressArgs:
    saliency_density: float | None = None  # update only the top fraction of |grad| per step (None: every weight)
    saliency: str = "step"  # with saliency_density: a mask per optimizer step, or ("fixed") the first step's for all
    reference: str = "cached"  # "cached": the target computed once; "model": the frozen θ_{t−1}
    topk: int = 64  # cached: tokens of the target kept per position (beside the label and the rest)
    rollout_every: int = 0  # decode the model's own continuations every this many epochs (0: never)
    ngram: int = 6  # a decoded token is the book's when it completes a run of this many of the book's tokens
    generic_ngram: int = 0  # ... and its own last this-many tokens occur in no retain row (0: no such check)
    rollout_weight: float = 1.0  # weight of the unlikelihood term on the rollouts
    rollout_target: str = "decoded"  # train down the decoded token if it is the book's, or ("book") the token the
    # book would put next wherever the decoded context ends with one of its runs, emitted or not
    rollout_offsets: list[int] = field(default_factory=lambda: [0])  # prompts slid this many tokens into the window
    rollout_samples: int = 0  # also this many sampled decodes per prompt (at rollout_temperature, full distribution)
    rollout_temperature: float = 1.0
    teacher_weight: float = 1.0  # weight of the teacher-forced KL on the book's own windows (0: rollouts alone)
    teacher_on: str = "all"  # the KL at every continuation token, or only at the "book" tokens rollouts would flag
    teacher_loss: str = "kl"  # on the book's own windows: the KL to q, or ("margin") the hinge under the runner-up
    word_starts: bool = False  # flag only tokens that begin a word, never one that continues the word before it
    rollout_loss: str = "unlikelihood"  # flagged token: −log(1 − p), ("margin") a hinge, or ("kl") KL to the decoder's
    # distribution there without the token (rollouts.flagged_targets; its topk as the teacher's)
    run_on_weight: float = 1.0  # kl: odds of a piece that would glue onto the word before, in that target
    margin: float = 4.0  # rollout_loss margin: the gap (nats of logit) under the best other candidate trained for
    adversary: float = 0.0  # ρ: adversary_terms taken at the weights one relearning step of size ρ away (0: off)
    adversary_step: str = "l2"  # that step: ρ g / ‖g‖, or ("sign") ρ sign(g), AdamW's first step (methods/adversary.py)
    adversary_on: str = "flagged"  # g raises the trained-down tokens, or ("book") the book's own continuations
    adversary_terms: list[str] = field(default_factory=lambda: ["rollout"])  # the terms taken there: the rollout
    # term, and ("teacher") the teacher-forced one on the book's own windows

    def __post_init__(self) -> None:
        if self.teacher_on not in ("all", "book") or self.rollout_target not in ("decoded", "book") \
                or self.teacher_loss not in ("kl", "margin"):
            raise SSUError("suppress: teacher_on must be all or book, rollout_target decoded or book, "
                           "teacher_loss kl or margin")
        counts = [self.rollout_every, self.rollout_samples, self.rollout_weight, self.teacher_weight,
                  *self.rollout_offsets]
        if min(counts) < 0 or not self.rollout_offsets or self.ngram < 1 or self.rollout_temperature <= 0 \
                or not 0 <= self.generic_ngram <= self.ngram:
            raise SSUError("suppress: rollout_every, rollout_offsets, rollout_samples and weights >= 0, ngram >= 1, "
                           "generic_ngram in [0, ngram], rollout_temperature > 0")
        if self.word_starts and self.rollout_target == "book":
            raise SSUError("suppress: word_starts applies to the flagged tokens (rollout_target decoded)")
        if self.rollout_loss not in ("unlikelihood", "kl", "margin") or not 0 < self.run_on_weight <= 1 \
                or (self.rollout_loss == "kl" and self.rollout_target == "book") or self.margin <= 0:
            raise SSUError("suppress: rollout_loss must be unlikelihood, kl (with rollout_target decoded) or margin, "
                           "run_on_weight in (0, 1], margin > 0")
        if self.teacher_weight == 0 and (self.rollout_every == 0 or self.rollout_weight == 0):
            raise SSUError("suppress: teacher_weight 0 needs rollouts (rollout_every > 0, rollout_weight > 0)")
        if (self.saliency_density is not None and not 0 < self.saliency_density <= 1) \
                or self.saliency not in ("step", "fixed"):
            raise SSUError("suppress: saliency_density must be in (0, 1], saliency step or fixed")
        if self.adversary < 0 or self.adversary_step not in STEPS or self.adversary_on not in ("flagged", "book") \
                or not self.adversary_terms or not set(self.adversary_terms) <= {"rollout", "teacher"}:
            raise SSUError("suppress: adversary must be >= 0, adversary_step l2 or sign, adversary_on flagged or book, "
                           "adversary_terms some of rollout and teacher")
        if self.reference not in ("model", "cached") or self.topk < 1:
            raise SSUError("suppress: reference must be model or cached, topk >= 1")


def next_token_logits(model, batch: Batch) -> torch.Tensor:
    """The logits that predict a token, from the batch's first labelled column on (the packed
    loss's saving: no logits for the prompt columns no row labels), aligned with
    :func:`shifted_labels`."""
    return labelled_logits(model, batch)[:, :-1]


def shifted_labels(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """The next-token labels that ``logits`` (:func:`next_token_logits`) predict."""
    return batch.labels[:, batch.labels.size(1) - logits.size(1) :]


def group_labels(batch: Batch, logits: torch.Tensor, group: int) -> torch.Tensor:
    """:func:`shifted_labels` of the rows of ``group`` only (every other row ignored)."""
    return shifted_labels(batch, logits).masked_fill((batch.group != group).unsqueeze(1), IGNORE_INDEX)


def row_key(batch: Batch, row: int) -> tuple[int, ...]:
    """A batch row's token ids without padding: how a row finds what was stored for its window."""
    return tuple(batch.input_ids[row][batch.attention_mask[row].bool()].tolist())


def per_token(batch: Batch, mask: torch.Tensor, table: dict[tuple[int, ...], torch.Tensor], fill) -> torch.Tensor:
    """(rows, tokens) holding each masked row's stored per-token values ``table[row_key]`` at its
    masked positions and ``fill`` elsewhere."""
    values = next(iter(table.values()))
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=mask.device)
    for row in mask.any(-1).nonzero().flatten().tolist():
        out[row, mask[row]] = table[row_key(batch, row)].to(mask.device)
    return out


@METHODS.register("suppress", description="distill θ_{t-1}'s next-token distribution with the book's token "
                                          "removed, on the book's continuations; stored as is")
class Suppress(UnlearningMethod):
    Args = SuppressArgs
    sign = +1
    needs_reference = True

    def __init__(self, args: SuppressArgs | None = None):
        super().__init__(args or SuppressArgs())
        self.needs_reference = self.args.reference == "model" and self.args.teacher_weight > 0 \
            and self.args.teacher_loss == "kl"
        self.cache: dict[tuple[int, ...], tuple] | None = None
        self.generates = self.args.rollout_every > 0
        self.book: set[tuple[int, ...]] = set()
        self.generic: set[tuple[int, ...]] = set()
        self.learn_flags: dict[tuple[int, ...], torch.Tensor] = {}
        self.rollouts: list[Encoded] = []
        self.flags: dict[tuple[int, ...], torch.Tensor] = {}
        self.targets: dict[tuple[int, ...], torch.Tensor] = {}  # rollout_target book: per decoded token, or -1
        self.next_of: dict[tuple[int, ...], list[int]] = {}  # rollout_target book: run -> the book's next tokens
        self.joins: tuple[set[int], set[int]] | None = None  # word_starts, run_on_weight: see word_joins
        self.rollout_q: dict[tuple[int, ...], tuple] = {}  # rollout_loss kl: per rollout row, its flagged targets
        if self.args.saliency_density is not None:
            self.saliency_mode, self.saliency_density = self.args.saliency, self.args.saliency_density

    def prepare(self, model, fs) -> None:
        """cached: q of every forget window at θ_{t−1}, keyed by its token ids (how a batch row is found)."""
        if not self.needs_reference and self.args.teacher_weight > 0 and self.args.teacher_loss == "kl":
            self.cache = {tuple(e.ids): cached_target(model, e, fs.pad_id, self.args.topk) for e in fs.learn}
        a = self.args
        if (a.word_starts or a.run_on_weight < 1) and fs.tokenizer is None:
            raise SSUError("suppress: word_starts and run_on_weight need the forget set's tokenizer")
        self.joins = word_joins(fs.tokenizer) if a.word_starts or a.run_on_weight < 1 else None
        if self.generates or a.teacher_on == "book":
            self.book = ngrams(fs.learn, a.ngram) - ngrams(fs.retain, a.ngram)
            self.generic = ngrams(fs.retain, a.generic_ngram) if a.generic_ngram else set()
            self.next_of = book_next(self.book, self.generic, a.generic_ngram) if a.rollout_target == "book" else {}
        if a.teacher_on == "book":
            joins = self.joins if a.word_starts else None
            self.learn_flags = {tuple(e.ids): torch.tensor(book_flags(e.ids, max(e.n_prompt, 1), self.book, a.ngram,
                                                                      self.generic, a.generic_ngram, joins))
                                for e in fs.learn}

    def start_epoch(self, model, fs, epoch: int) -> None:
        """Every ``rollout_every`` epochs from the first: decode, and flag the book's tokens."""
        if not self.generates or (epoch - 1) % self.args.rollout_every:
            return
        a = self.args
        prompts = [slid(e, o) for e in fs.learn for o in a.rollout_offsets]
        ids, budgets = [p.prompt_ids for p in prompts], [len(p.continuation_ids) for p in prompts]
        temps = [None] + [a.rollout_temperature] * a.rollout_samples  # the greedy decode, then the samples
        gen = [rollout(model, ids, budgets, fs.pad_id, temperature=t) for t in temps]
        rolled = [Encoded(ids=p.prompt_ids + g[j], n_prompt=p.n_prompt) for j, p in enumerate(prompts) for g in gen]
        n = len(a.rollout_offsets) * len(gen)
        self.rollouts = [rolled[i * n : (i + 1) * n] for i in range(len(fs.learn))]
        joins = self.joins if a.word_starts else None
        self.flags = {tuple(r.ids): torch.tensor(book_flags(r.ids, max(r.n_prompt, 1), self.book, a.ngram,
                                                            self.generic, a.generic_ngram, joins)) for r in rolled}
        if a.rollout_loss == "kl":  # the target at the flagged tokens, from the model that decoded them
            rows = list({tuple(r.ids): r for r in rolled}.values())
            q = flagged_targets(model, rows, [self.flags[tuple(r.ids)] for r in rows], fs.pad_id, a.topk,
                                self.joins, a.run_on_weight)
            self.rollout_q = {tuple(r.ids): t for r, t in zip(rows, q)}
        if a.rollout_target == "book":
            self.targets = {tuple(r.ids): torch.tensor(book_targets(r.ids, max(r.n_prompt, 1), self.next_of, a.ngram))
                            for r in rolled}

    def rows(self, i: int) -> list[Row]:
        return [(r, ROLLOUT) for r in self.rollouts[i]] if self.rollouts else []

    def loss(self, model, batch: Batch, reference=None):
        logits = next_token_logits(model, batch)
        loss, parts = logits.new_zeros((), dtype=torch.float32), {}
        a = self.args
        terms = {"teacher": a.teacher_weight > 0, "rollout": batch.has(ROLLOUT)}
        moved = a.adversary > 0 and any(terms[t] for t in a.adversary_terms)
        shifted = self.relearned_logits(model, batch, logits) if moved else logits
        at = {t: shifted if t in a.adversary_terms else logits for t in terms}  # the logits each term is taken at
        if terms["teacher"]:
            teacher = self.teacher_kl(at["teacher"], batch, reference)
            name = "suppress_hinge" if a.teacher_loss == "margin" else "suppress_kl"
            loss, parts = a.teacher_weight * teacher, {name: teacher.item()}
        if terms["rollout"]:
            lg = at["rollout"]
            term, book = self.rollout_kl(lg, batch) if a.rollout_loss == "kl" else self.unlikelihood(lg, batch)
            loss = loss + a.rollout_weight * term
            parts.update(rollout_ul=term.item(), rollout_book=book.item())
        return loss, parts

    def relearned_logits(self, model, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """``adversary`` ρ: the batch's logits at the weights one relearning step away
        (:func:`~ssu.methods.adversary.relearned_params`), where the rollout term then has to hold as
        well -- sharpness-aware unlearning's inner step taken along the relearning direction (the
        forget term here is zero once its tokens are down, so its own gradient gives none). That
        direction raises the mean log-probability of the tokens the term trains down or, with
        ``adversary_on: book``, of the book's continuation tokens in the window rows: the learning
        loss the relearning attacker descends. With ``adversary_terms`` [teacher] (or both) the
        teacher-forced term is taken there too: a hinge met at θ has no gradient, met at θ + δ it keeps
        the book's tokens under their runners-up after the attacker's step. Costs one more backward and
        forward, g while δ is made and the moved weights until the backward -- an option, not the
        ≤ 2 bytes/param recipe."""
        if self.args.adversary_on == "book":
            target = group_labels(batch, logits, LEARN)
            hit = target != IGNORE_INDEX
        elif batch.has(ROLLOUT):
            _, _, target, hit = self.rollout_positions(batch, logits)
        else:  # no rollout rows: no flagged tokens to raise
            return logits
        if not hit.any():
            return logits
        lg = logits[hit].float()  # log p(token) = logit − logsumexp at the hit positions only
        logp = lg.gather(-1, target[hit].unsqueeze(-1)).squeeze(-1) - lg.logsumexp(-1)
        moved = relearned_params(model, logp.mean(), self.args.adversary, self.args.adversary_step)
        return logits if moved is None else labelled_logits(model, batch, moved)[:, :-1]

    def rollout_positions(self, batch: Batch, logits: torch.Tensor):
        """The rollout rows' (mask of labelled tokens, flagged as the book's, token to train down,
        where to train it): the decoded token where it is flagged, or with ``rollout_target: book``
        the book's next token wherever the decoded context ends with one of its runs."""
        labels = group_labels(batch, logits, ROLLOUT)
        mask = labels != IGNORE_INDEX
        flagged = per_token(batch, mask, self.flags, False)
        if self.args.rollout_target == "book":
            target = per_token(batch, mask, self.targets, -1)
            return mask, flagged, target, target >= 0
        return mask, flagged, labels, flagged

    def teacher_kl(self, logits: torch.Tensor, batch: Batch, reference) -> torch.Tensor:
        """KL(q ‖ p_θ) (``teacher_loss: margin``: the hinge m under the runner-up) at the learning rows'
        continuation tokens, over the micro-batch's."""
        labels = group_labels(batch, logits, LEARN)
        mask = labels != IGNORE_INDEX
        if self.args.teacher_loss == "margin":
            kl = logits.new_zeros(labels.shape, dtype=torch.float32)
            kl[mask] = margin_hinge(logits[mask], labels[mask].unsqueeze(-1), self.args.margin)
        elif self.needs_reference:
            if reference is None:
                raise SSUError("method suppress needs the reference model theta_(t-1)")
            with torch.no_grad():
                ref = next_token_logits(reference, batch)
            kl = suppression_kl(logits, ref, labels)
        else:
            if self.cache is None:
                raise SSUError("method suppress (reference: cached) was not prepared on the step's forget set")
            kl = logits.new_zeros(labels.shape, dtype=torch.float32)
            for row in mask.any(-1).nonzero().flatten().tolist():
                ids, logq, want = self.cache[row_key(batch, row)]
                if not torch.equal(want.to(labels.device), labels[row][mask[row]]):
                    raise SSUError("suppress: a batch row's labels differ from its cached window's")
                kl[row, mask[row]] = cached_kl(logits[row][mask[row]], ids, logq, want)
        if self.args.teacher_on == "book":  # the other tokens count zero (still in the token mean)
            kl = kl * per_token(batch, mask, self.learn_flags, False).to(kl.dtype)
        return group_mean_nll(kl, mask, batch, LEARN)

    def unlikelihood(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """−log(1 − p(token)) (``margin``: max(0, m + z_token − max z_other)) at the rollout tokens
        flagged as the book's, over the rollouts' tokens; and the flagged fraction (how much of the
        model's own output is still the book)."""
        mask, flagged, target, hit = self.rollout_positions(batch, logits)
        # log p(token) = logit − logsumexp on the rollout rows only: no full log-softmax copy of the logits
        rows = batch.group.to(logits.device) == ROLLOUT
        lg, want = logits[rows].float(), target[rows].clamp(min=0).unsqueeze(-1)
        ul = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
        if self.args.rollout_loss == "margin":  # the token m under the runner-up, not only just under it
            ul[rows] = margin_hinge(lg, want, self.args.margin) * hit[rows]
        else:
            logp = lg.gather(-1, want).squeeze(-1) - lg.logsumexp(-1)
            ul[rows] = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6)) * hit[rows]
        return group_mean_nll(ul, mask, batch, ROLLOUT), group_mean_nll(flagged.float(), mask, batch, ROLLOUT)

    def rollout_kl(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(q ‖ p_θ) at the flagged rollout tokens (q: :func:`flagged_targets`, over the k + 2
        outcomes of the cached teacher), over the rollouts' tokens; and the flagged fraction."""
        mask, flagged, _, _ = self.rollout_positions(batch, logits)
        kl = logits[..., 0].float() * 0  # in the graph: a micro-batch with nothing flagged still backpropagates
        for row in flagged.any(-1).nonzero().flatten().tolist():
            ids, logq, tok = self.rollout_q[row_key(batch, row)]
            kl[row, flagged[row]] = cached_kl(logits[row][flagged[row]], ids, logq, tok)
        return group_mean_nll(kl, mask, batch, ROLLOUT), group_mean_nll(flagged.float(), mask, batch, ROLLOUT)
