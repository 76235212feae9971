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
α. Measured (experiments/deep, demo world): the target alone barely moves greedy ROUGE-L
-- taught only on the book's own prefixes, a continuation that leaves the book at one
token returns to it at the next -- so the never-seen level needed α 3-6; there it removed
within every removal goal, relearning included, for two steps and kept retained text,
but took the books not yet removed from the second step on.

θ_{t−1}'s predictions, by ``reference``: ``model`` takes them from the step's frozen reference
(a copy of the model under a full fine-tune -- 2 to 4 bytes per parameter -- the adapter
switched off under LoRA); ``cached`` (default) computes the target once before training
(:meth:`Suppress.prepare`) on the book's windows, each position's ``topk`` most likely
tokens of q plus the label and one bucket for the rest, and takes the KL over those k + 2
outcomes: no copy; exact when k covers the vocabulary, a lower bound of the full KL otherwise
(merging outcomes never raises a KL). Its size is windows × tokens × (8k + 8) bytes -- one
book, independent of the model's size.

Written here because no kept library has it: open-unlearning's methods (GradDiff, NPO,
SimNPO, DPO with refusals, RMU) train toward ascent, preferences or a steering vector,
not toward the model's own distribution with the forget token removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.losses import IGNORE_INDEX, LEARN, Batch, group_mean_nll, log_rest, make_batch
from ssu.errors import SSUError
from ssu.methods.base import METHODS, UnlearningMethod


@dataclass
class SuppressArgs:
    saliency_density: float | None = None  # update only the top fraction of |grad| per step (None: every weight)
    reference: str = "cached"  # "cached": the target computed once; "model": the frozen θ_{t−1}
    topk: int = 64  # cached: tokens of the target kept per position (beside the label and the rest)

    def __post_init__(self) -> None:
        if self.saliency_density is not None and not 0 < self.saliency_density <= 1:
            raise SSUError("suppress: saliency_density must be in (0, 1]")
        if self.reference not in ("model", "cached") or self.topk < 1:
            raise SSUError("suppress: reference must be model or cached, topk >= 1")


def suppressed_target(ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log q: the reference's next-token log-distribution with each position's label taken out.

    ``ref_logits`` (tokens, vocab) and ``labels`` (tokens,) at labelled positions. Computed
    in float32; the label's entry is −inf, so it gets exactly zero probability.
    """
    masked = ref_logits.float().scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return F.log_softmax(masked, -1)


def suppression_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position KL(q ‖ p_θ) with q = :func:`suppressed_target` (0 where the label is ignored).

    ``logits`` / ``ref_logits`` (rows, width - 1, vocab) predict ``labels`` (rows, width - 1).
    """
    mask = labels != IGNORE_INDEX
    out = logits.new_zeros(labels.shape, dtype=torch.float32)
    if not mask.any():
        return out
    logq = suppressed_target(ref_logits[mask], labels[mask])
    logp = F.log_softmax(logits[mask].float(), -1)
    q = logq.exp()
    out[mask] = (q * (logq.clamp(min=torch.finfo(torch.float32).min) - logp)).sum(-1)
    return out


@torch.no_grad()
def cached_target(model, enc, pad_id: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q at one window's labelled positions as (ids of its top k, int32), (log q of those k and
    of the rest, float32) and (the labels, int64); the label itself is left out of the k."""
    was_training = model.training
    model.eval()
    batch = make_batch([(enc, LEARN)], pad_id).to(next(model.parameters()).device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    model.train(was_training)
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logq = suppressed_target(logits[mask], labels[mask])
    top, ids = logq.topk(min(k, logq.shape[-1] - 1), -1)  # q(label) = 0: never among them
    return ids.to(torch.int32).cpu(), torch.cat([top, log_rest(top)], -1).cpu(), labels[mask].cpu()


def cached_kl(logits: torch.Tensor, ids: torch.Tensor, logq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position KL(q ‖ p_θ) over the outcomes {the cached k, the label, the rest}; q(label) = 0."""
    logp = F.log_softmax(logits.float(), -1)
    p_top = logp.gather(-1, ids.to(logp.device, torch.int64))
    p_label = logp.gather(-1, labels.to(logp.device).unsqueeze(-1))
    logp_k = torch.cat([p_top, log_rest(torch.cat([p_top, p_label], -1))], -1)
    logq = logq.to(logp.device)
    return (logq.exp() * (logq - logp_k)).sum(-1)


@METHODS.register("suppress", description="distill θ_{t-1}'s next-token distribution with the book's token "
                                          "removed, on the book's continuations; stored as is")
class Suppress(UnlearningMethod):
    Args = SuppressArgs
    sign = +1
    needs_reference = True

    def __init__(self, args: SuppressArgs | None = None):
        super().__init__(args or SuppressArgs())
        self.needs_reference = self.args.reference == "model"
        self.cache: dict[tuple[int, ...], tuple] | None = None
        if self.args.saliency_density is not None:
            self.saliency_mode, self.saliency_density = "step", self.args.saliency_density

    def prepare(self, model, fs) -> None:
        """cached: q of every forget window at θ_{t−1}, keyed by its token ids (how a batch row is found)."""
        if not self.needs_reference:
            self.cache = {tuple(e.ids): cached_target(model, e, fs.pad_id, self.args.topk) for e in fs.learn}

    def loss(self, model, batch: Batch, reference=None):
        labels = batch.labels[:, 1:].masked_fill((batch.group != LEARN).unsqueeze(1), IGNORE_INDEX)
        mask = labels != IGNORE_INDEX
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        if self.needs_reference:
            if reference is None:
                raise SSUError("method suppress needs the reference model theta_(t-1)")
            with torch.no_grad():
                ref = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
            kl = suppression_kl(logits, ref, labels)
        else:
            if self.cache is None:
                raise SSUError("method suppress (reference: cached) was not prepared on the step's forget set")
            kl = logits.new_zeros(labels.shape, dtype=torch.float32)
            for row in mask.any(-1).nonzero().flatten().tolist():
                key = tuple(batch.input_ids[row][batch.attention_mask[row].bool()].tolist())
                ids, logq, want = self.cache[key]
                if not torch.equal(want.to(labels.device), labels[row][mask[row]]):
                    raise SSUError("suppress: a batch row's labels differ from its cached window's")
                kl[row, mask[row]] = cached_kl(logits[row][mask[row]], ids, logq, want)
        loss = group_mean_nll(kl, mask, batch, LEARN)
        return loss, {"suppress_kl": loss.item()}
