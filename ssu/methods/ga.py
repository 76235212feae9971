"""Gradient ascent (GA): the simplest unlearning baseline.

Maximize the cross-entropy of the forget continuations, i.e. minimize its negative.
The fine-tune already moves *away* from the book, so the change is stored as is
(``sign = +1``); no saliency mask, no random labels, no parameters.
"""

from __future__ import annotations

from ssu.engine.losses import LEARN, Batch, forward_nll, group_mean_nll
from ssu.methods.base import METHODS, UnlearningMethod


@METHODS.register("ga", description="gradient ascent: minimize -CE on the forget continuations, stored as is")
class GradientAscent(UnlearningMethod):
    sign = +1

    def loss(self, model, batch: Batch, reference=None):
        nll, mask = forward_nll(model, batch)
        forget = group_mean_nll(nll, mask, batch, LEARN)
        return -forget, {"forget_ce": forget.item()}
