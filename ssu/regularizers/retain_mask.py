"""Retain-aware saliency mask: the weights retained books lean on most never move in the step.

Before the fine-tune, at θ_{t−1}, the empirical Fisher F of the retain windows is
taken per weight (as for ``fisher``); the ``fraction`` of entries with the largest F
(exact k-th largest over all trainable entries, the saliency mask's radix select) are
frozen for the whole step: a gradient hook multiplies every backward's gradient by the
keep mask, so the accumulated gradient -- and the method's own saliency mask, taken on
it -- never selects them, and with AdamW (weight decay 0) a weight whose gradient is
always zero stays bit-identical. Where ``fisher`` shrinks the finished vector, this
moves the step's budget to other weights while it trains. Full fine-tunes on one
process or DDP: an FSDP shard has no per-weight hook of its own.

Memory: one bool per trainable weight (1 byte per parameter, 8 GB at 8B), plus the
float32 Fisher while the threshold is found.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssu.engine.saliency import topk_threshold
from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, step_retain_fisher


@dataclass
class RetainMaskArgs:
    fraction: float = 0.05  # share of the trainable entries frozen for the step
    windows: int = 16  # retain windows the Fisher is taken from

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1 or self.windows < 1:
            raise SSUError("retain-mask: fraction must be in (0, 1) and windows >= 1")


@REGULARIZERS.register("retain-mask", description="freeze the weights with the top retain-window Fisher "
                                                  "(a fraction of them) for the step")
class RetainMask(Regularizer):
    Args = RetainMaskArgs
    needs_retain = True
    fsdp = False

    def prepare(self, model, fs) -> None:
        fisher, self.windows = step_retain_fisher(self.name, model, fs, self.args.windows, self.seed)
        threshold = topk_threshold(list(fisher.values()), self.args.fraction)
        self.keep = {n: f < threshold for n, f in fisher.items()}
        del fisher
        self.frozen = sum(int((~k).sum()) for k in self.keep.values())
        self.total = sum(k.numel() for k in self.keep.values())
        self.handles = [p.register_hook(_masker(self.keep[n])) for n, p in model.named_parameters()
                        if p.requires_grad]

    def finish(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def record(self) -> dict:
        return {"fraction": self.args.fraction, "windows": self.windows, "frozen": self.frozen, "of": self.total}


def _masker(keep):
    return lambda grad: grad * keep.to(grad.device, grad.dtype)
