"""Retain protection at 2 bytes per parameter: one bf16 Fisher gives the mask and the damping.

``fisher`` (float32 Fisher, 4 bytes per parameter) and ``retain-mask`` (a bool per weight,
1 byte, plus a float32 Fisher while its threshold is found) together hold 5 bytes per
parameter beyond plain SSU -- 40 GB at 8B. ``protect`` does both from one empirical
retain Fisher F kept in **bfloat16** (2 bytes per parameter) and nothing else per weight:

- **mask**: the ``fraction`` of entries with the largest F is frozen for the step. The
  threshold is one float (the exact k-th largest, the saliency mask's radix select, on
  the bf16 values); each gradient hook compares F with it on the fly, so no bool tensor
  outlives a backward. Frozen weights stay bit-identical (AdamW, weight decay 0).
- **damping**: the step's vector is multiplied by 1 / (1 + λ·F / mean F), computed per
  tensor in float32 when the vector is taken.

F is accumulated from ``windows`` retain windows (one window per backward: the empirical
Fisher), each square added in float32 and rounded to bf16 once per window. bf16 keeps
8 significant bits: the stored F is within a few parts in a thousand of the float32
sum per add (the test bounds the end result), far below the estimate's own sampling
error over a few dozen windows, and what F decides -- which entries pass a threshold,
how much an entry is damped -- moves by as little. Full fine-tunes on one process or
DDP (the hooks and F are per weight of the whole tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssu.engine.saliency import topk_threshold
from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, require_full, require_retain, retain_fisher, sample


@dataclass
class ProtectArgs:
    lam: float = 30.0  # λ: how strongly a weight's Fisher damps its change (0: no damping)
    fraction: float = 0.05  # share of the trainable entries frozen for the step (0: no mask)
    windows: int = 64  # retain windows the Fisher is taken from

    def __post_init__(self) -> None:
        if self.lam < 0 or not 0 <= self.fraction < 1 or self.windows < 1:
            raise SSUError("protect: lam must be >= 0, fraction in [0, 1) and windows >= 1")


@REGULARIZERS.register("protect", description="freeze the top retain-Fisher weights and damp the change by "
                                              "1 / (1 + λ F / mean F), from one bf16 Fisher (2 bytes/param)")
class Protect(Regularizer):
    Args = ProtectArgs
    needs_retain = True
    fsdp = False

    def prepare(self, model, fs) -> None:
        require_full(self.name, model)
        require_retain(self.name, fs)
        rows = sample(fs.retain, self.args.windows, self.seed + fs.step)
        self.windows = len(rows)
        self.fisher = retain_fisher(model, rows, fs.pad_id, torch.bfloat16)
        total = sum(float(f.sum(dtype=torch.float64)) for f in self.fisher.values())
        self.mean = total / max(sum(f.numel() for f in self.fisher.values()), 1)
        self.threshold, self.frozen, self.handles = None, 0, []
        if self.args.fraction > 0:
            self.threshold = topk_threshold(list(self.fisher.values()), self.args.fraction)
            self.frozen = sum(int((f >= self.threshold).sum()) for f in self.fisher.values())
            self.handles = [p.register_hook(_masker(self.fisher[n], self.threshold))
                            for n, p in model.named_parameters() if p.requires_grad]
        self.total = sum(f.numel() for f in self.fisher.values())

    def finish(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def damping(self, name: str) -> torch.Tensor:
        """1 / (1 + λ F / mean F) of one tensor, in float32 (made when asked, not kept)."""
        if self.mean <= 0:
            return torch.ones_like(self.fisher[name], dtype=torch.float32)
        return 1.0 / (1.0 + self.args.lam * self.fisher[name].float() / self.mean)

    def vector(self, vector, model):
        if self.args.lam > 0:
            for k in vector.keys():  # in place (the step's own vector): no second copy of the weights
                vector[k].mul_(self.damping(k).to(vector[k].device))
        return vector

    def state_bytes(self) -> int:
        """Bytes this regularizer holds per step beyond plain SSU (the bf16 Fisher)."""
        return sum(f.numel() * f.element_size() for f in self.fisher.values())

    def record(self) -> dict:
        return {"lambda": self.args.lam, "fraction": self.args.fraction, "windows": self.windows,
                "frozen": self.frozen, "of": self.total, "fisher_dtype": "bfloat16"}


def _masker(fisher: torch.Tensor, threshold: float):
    # the threshold is a bf16 value (the k-th largest of F), so comparing in bf16 is exact
    def hook(grad):
        return grad.masked_fill(fisher.to(grad.device) >= threshold, 0)
    return hook
