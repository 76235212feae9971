"""Negative Preference Optimization (NPO, Zhang et al. 2024) and NPO + retain (NPO-GDR).

L = -(2/beta) * mean log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))
over the forget windows, with *sequence* log-probabilities of the continuation
(the sum over its tokens -- some public code used raw logits by mistake) and
pi_ref the model at the start of the time step. Unlike gradient ascent the loss
is bounded below, so the ascent slows down once the book is unlikely instead of
diverging. At theta = pi_ref the loss is exactly (2/beta) log 2. Stored as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.losses import LEARN, RETAIN, Batch, forward_nll, group_mean_nll, group_row_mean, sequence_logprob
from ssu.errors import SSUError
from ssu.methods.base import METHODS, UnlearningMethod


@dataclass
class NPOArgs:
    beta: float = 0.4  # inverse temperature of the preference loss

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise SSUError("npo: beta must be > 0")


@dataclass
class NPOWithRetainArgs(NPOArgs):
    retain_weight: float = 1.0  # weight of the retain CE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_weight < 0:
            raise SSUError("npo-gdr: retain_weight must be >= 0")


@METHODS.register("npo", description="negative preference optimization on sequence log-probs vs theta_{t-1}, "
                                      "stored as is")
class NPO(UnlearningMethod):
    Args = NPOArgs
    sign = +1
    needs_reference = True

    def npo_terms(self, model, batch: Batch, reference):
        """The NPO loss, plus the per-token NLL so subclasses add terms without a second forward."""
        if reference is None:
            raise SSUError(f"method {self.name} needs the reference model theta_(t-1)")
        nll, mask = forward_nll(model, batch)
        rows = batch.group == LEARN
        logp = sequence_logprob(nll, rows)
        with torch.no_grad():
            ref_logp = sequence_logprob(forward_nll(reference, batch)[0], rows)
        ratio = logp - ref_logp
        npo = -(2.0 / self.args.beta) * group_row_mean(F.logsigmoid(-self.args.beta * ratio), batch, LEARN)
        return npo, nll, mask, {"npo": npo.item(), "log_ratio": group_row_mean(ratio, batch, LEARN).item()}

    def loss(self, model, batch: Batch, reference=None):
        npo, _, _, stats = self.npo_terms(model, batch, reference)
        return npo, stats


@METHODS.register("npo-gdr", description="NPO + retain_weight * CE(retain) (NPO-GDR), stored as is")
class NPOWithRetain(NPO):
    Args = NPOWithRetainArgs
    needs_retain = True

    def loss(self, model, batch: Batch, reference=None):
        npo, nll, mask, stats = self.npo_terms(model, batch, reference)
        retain = group_mean_nll(nll, mask, batch, RETAIN)
        return npo + self.args.retain_weight * retain, {**stats, "retain_ce": retain.item()}
