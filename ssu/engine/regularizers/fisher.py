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

Config: ``fisher_lambda`` (λ, default 10), ``fisher_windows`` (retain windows used, 16).
"""

from __future__ import annotations

import torch

from ssu.engine.regularizers.base import Regularizer, register_regularizer, step_retain_fisher


@register_regularizer
class FisherDamping(Regularizer):
    name = "fisher"
    description = "damp the step's change by 1 / (1 + λ F / mean F), F: retain-window Fisher at θ_{t-1}"
    needs_retain = True

    def prepare(self, model, fs, tokenizer) -> None:
        fisher, self.windows = step_retain_fisher(self.name, model, fs, tokenizer, self.cfg.fisher_windows,
                                                  self.cfg.seed)
        total = sum(float(f.sum(dtype=torch.float64)) for f in fisher.values())
        mean = total / sum(f.numel() for f in fisher.values())
        self.scale = {n: 1.0 / (1.0 + self.cfg.fisher_lambda * f / mean) for n, f in fisher.items()}

    def vector(self, vector, model):
        from ssu.vectors import TaskVector

        return TaskVector({k: vector[k] * self.scale[k].to(vector[k].device) for k in vector.keys()})

    def record(self) -> dict:
        return {"lambda": self.cfg.fisher_lambda, "windows": self.windows}
