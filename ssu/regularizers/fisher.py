"""Fisher damping: shrink the step's change where retained text depends on the weights.

Before the fine-tune, at θ_{t−1}, the empirical Fisher information of the retain
windows is accumulated per weight, F = mean over windows of g² (g: the gradient of a
window's continuation NLL), one window per backward. The step's vector is then damped
entry by entry, v ← v / (1 + λ·F / mean(F)), so weights that retained books lean on
move less and the rest move as trained. Applied to the vector rather than the
gradient because AdamW divides each entry by its own gradient scale: a constant
per-entry factor on the gradient would cancel. With α calibration the step then takes
the α that still removes the book with the damped vector. EWC-style; SUV (Xu et al.
2025) uses Fisher regularization for one-shot unlearning. Full fine-tunes only: the
damping is per weight of the dense change (a LoRA vector's factors have no such entries).

Memory: one float32 Fisher per trainable weight (4 bytes per parameter) for the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, step_retain_fisher


@dataclass
class FisherArgs:
    lam: float = 10.0  # λ: how strongly a weight's Fisher damps its change
    windows: int = 16  # retain windows the Fisher is taken from

    def __post_init__(self) -> None:
        if self.lam < 0 or self.windows < 1:
            raise SSUError("fisher: lam must be >= 0 and windows >= 1")


@REGULARIZERS.register("fisher", description="damp the step's change by 1 / (1 + λ F / mean F), "
                                             "F: retain-window Fisher at θ_{t-1}")
class FisherDamping(Regularizer):
    Args = FisherArgs
    needs_retain = True
    fsdp = False  # the Fisher and the damping are per weight of the whole tensor

    def prepare(self, model, fs) -> None:
        fisher, self.windows = step_retain_fisher(self.name, model, fs, self.args.windows, self.seed)
        total = sum(float(f.sum(dtype=torch.float64)) for f in fisher.values())
        mean = total / sum(f.numel() for f in fisher.values())
        self.scale = {n: 1.0 / (1.0 + self.args.lam * f / mean) for n, f in fisher.items()}

    def vector(self, vector, model):
        for k in vector.keys():  # in place (the step's own vector): no second copy of the weights
            vector[k].mul_(self.scale[k].to(vector[k].device))
        return vector

    def record(self) -> dict:
        return {"lambda": self.args.lam, "windows": self.windows}
