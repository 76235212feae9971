"""Stable Sequential Unlearning (Dou et al., 2024) and its two ablations.

Fine-tune on the forget set with the learning loss on continuations plus
epsilon x the random-label loss, updating only gradient-salient weights; the step's
task vector is then negated (``sign = -1``). The ablations switch off one part.
"""

from __future__ import annotations

from ssu.engine.losses import LEARN, RANDOM, Batch, forward_nll, group_mean_nll
from ssu.methods.base import UnlearningMethod, register_method


@register_method
class SSU(UnlearningMethod):
    name = "ssu"
    description = "learning loss + epsilon * random-label loss, saliency-masked, negated"
    sign = -1

    @property
    def uses_random_labels(self) -> bool:
        return self.cfg.epsilon > 0

    @property
    def saliency_mode(self) -> str:
        return self.cfg.saliency

    def loss(self, model, batch: Batch, reference=None):
        nll, mask = forward_nll(model, batch)
        learn = group_mean_nll(nll, mask, batch, LEARN)
        total, stats = learn, {"learn": learn.item()}
        if self.uses_random_labels and batch.has(RANDOM):
            rand = group_mean_nll(nll, mask, batch, RANDOM)
            total = total + self.cfg.epsilon * rand
            stats["random"] = rand.item()
        return total, stats


@register_method
class SSUNoRandomLabels(SSU):
    name = "ssu-no-random-labels"
    description = "SSU without the random-label loss (epsilon = 0)"

    @property
    def uses_random_labels(self) -> bool:
        return False


@register_method
class SSUNoSaliency(SSU):
    name = "ssu-no-saliency"
    description = "SSU without the gradient-saliency mask"

    @property
    def saliency_mode(self) -> str:
        return "none"


@register_method
class TaskVectorNegation(SSU):
    name = "tv"
    description = "plain task-vector negation: learning loss only, no mask, negated"

    @property
    def uses_random_labels(self) -> bool:
        return False

    @property
    def saliency_mode(self) -> str:
        return "none"
