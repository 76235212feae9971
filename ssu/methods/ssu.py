"""Stable Sequential Unlearning (Dou et al., 2024), its two ablations, and task-vector negation.

Fine-tune on the forget set with the learning loss on continuations plus
epsilon x the random-label loss, updating only gradient-salient weights; the step's
task vector is then negated (``sign = -1``). The ablations switch off one part; ``tv``
switches off both. The ``ssu-stable`` recipe is a preset (``ssu/presets.py``) around
this method, which itself stays the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssu.engine.losses import LEARN, RANDOM, Batch, forward_nll, group_mean_nll
from ssu.errors import SSUError
from ssu.methods.base import METHODS, UnlearningMethod

SALIENCY = ("step", "fixed", "none")


@dataclass
class SSUArgs:
    epsilon: float = 0.5  # weight of the random-label loss
    k_random: int = 3  # random continuations per prompt
    saliency: str = "step"  # "step" (per optimizer step), "fixed" (SalUn: the first mask) or "none"
    saliency_k: float = 1.0  # gamma = mean + k * std of |grad|
    saliency_density: float | None = None  # or keep the top fraction of |grad|

    def __post_init__(self) -> None:
        if self.epsilon < 0 or self.k_random < 1:
            raise SSUError("ssu: epsilon must be >= 0 and k_random >= 1")
        if self.saliency not in SALIENCY:
            raise SSUError(f"ssu: saliency must be one of {', '.join(SALIENCY)}, got {self.saliency!r}")
        if self.saliency_density is not None and not 0 < self.saliency_density <= 1:
            raise SSUError("ssu: saliency_density must be in (0, 1]")


@METHODS.register("ssu", description="learning loss + epsilon * random-label loss, saliency-masked, negated")
class SSU(UnlearningMethod):
    Args = SSUArgs
    sign = -1

    def __init__(self, args: SSUArgs):
        super().__init__(args)
        self.uses_random_labels = args.epsilon > 0
        self.saliency_mode = args.saliency
        self.saliency_k, self.saliency_density = args.saliency_k, args.saliency_density

    def loss(self, model, batch: Batch, reference=None):
        nll, mask = forward_nll(model, batch)
        learn = group_mean_nll(nll, mask, batch, LEARN)
        total, stats = learn, {"learn": learn.item()}
        if self.uses_random_labels and batch.has(RANDOM):
            rand = group_mean_nll(nll, mask, batch, RANDOM)
            total = total + self.args.epsilon * rand
            stats["random"] = rand.item()
        return total, stats


@METHODS.register("ssu-no-random-labels", description="SSU without the random-label loss (epsilon = 0)")
class SSUNoRandomLabels(SSU):
    def __init__(self, args: SSUArgs):
        super().__init__(args)
        self.uses_random_labels = False


@METHODS.register("ssu-no-saliency", description="SSU without the gradient-saliency mask")
class SSUNoSaliency(SSU):
    def __init__(self, args: SSUArgs):
        super().__init__(args)
        self.saliency_mode = "none"


@METHODS.register("tv", description="plain task-vector negation: learning loss only, no mask, negated")
class TaskVectorNegation(SSU):
    Args = None

    def __init__(self, args: None = None):
        super().__init__(SSUArgs(epsilon=0.0, saliency="none"))
