"""Gradient difference (GD): gradient ascent anchored by a retain batch.

Loss = -CE(forget) + retain_weight * CE(retain). The retain term keeps the books
that must stay memorized from collapsing along with the forget book, which plain
gradient ascent does not guard against. Stored as is (``sign = +1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ssu.engine.losses import LEARN, RETAIN, Batch, forward_nll, group_mean_nll
from ssu.errors import SSUError
from ssu.methods.base import METHODS, UnlearningMethod


@dataclass
class RetainWeight:
    retain_weight: float = 1.0  # weight of the retain CE beside the forget term

    def __post_init__(self) -> None:
        if self.retain_weight < 0:
            raise SSUError("retain_weight must be >= 0")


@METHODS.register("gd", description="gradient difference: -CE(forget) + retain_weight * CE(retain), stored as is")
class GradientDifference(UnlearningMethod):
    Args = RetainWeight
    sign = +1
    needs_retain = True

    def loss(self, model, batch: Batch, reference=None):
        nll, mask = forward_nll(model, batch)
        forget = group_mean_nll(nll, mask, batch, LEARN)
        retain = group_mean_nll(nll, mask, batch, RETAIN)
        total = -forget + self.args.retain_weight * retain
        return total, {"forget_ce": forget.item(), "retain_ce": retain.item()}
