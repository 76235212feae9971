"""KL to θ_{t−1} on retain windows: the step's model must keep predicting retained text as before.

In every backward, a few retain windows are forwarded through the model being trained
and through the frozen θ_{t−1}, and λ · KL(p_{θ_{t−1}} ‖ p_θ) over their continuation
tokens (mean per token) is added to the method's loss -- open-unlearning's ``KL``
retain term, here composable with any method. For SSU, whose fine-tune *learns* the
book and is then negated, it keeps the learned change τ from moving retained
predictions; since the KL is (to second order) the same quadratic form at θ_{t−1} ± τ,
the negated step keeps them too. The rows are drawn per chunk with the step's seed;
the term is weighted by the chunk's share of its micro-batch so that chunking does
not change it.

Parameters (``Args``): ``lam`` (λ, default 1), ``windows`` (retain windows per micro-batch,
default: as many as forget windows in it).

Memory: a full fine-tune needs the frozen θ_{t−1} as a second copy of the model (a LoRA
step switches its adapter off instead).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.losses import make_batch
from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, chunk_share, draw_rows, require_retain


@dataclass
class KLArgs:
    lam: float = 1.0  # λ: weight of the KL term
    windows: int | None = None  # retain windows per chunk; None: as many as its forget windows

    def __post_init__(self) -> None:
        if self.lam < 0 or (self.windows is not None and self.windows < 1):
            raise SSUError("kl: lam must be >= 0 and windows >= 1")


def continuation_kl(model, reference, batch) -> torch.Tensor:
    """Mean over labelled tokens of KL(p_reference ‖ p_model) of the next-token distribution."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    with torch.no_grad():
        ref = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    mask = batch.labels[:, 1:] != -100
    logp, logq = F.log_softmax(logits[mask], -1), F.log_softmax(ref[mask], -1)
    return F.kl_div(logp, logq, log_target=True, reduction="batchmean")


@REGULARIZERS.register("kl", description="add λ·KL(p_θ(t-1) ‖ p_θ) on retain windows to every backward "
                                         "(open-unlearning's KL term)")
class RetainKL(Regularizer):
    Args = KLArgs
    needs_retain = True
    needs_reference = True
    has_loss = True

    def prepare(self, model, fs) -> None:
        require_retain(self.name, fs)
        self.rows = list(fs.retain)
        self.pad_id = fs.pad_id
        self.rng = random.Random(self.seed + fs.step)
        self.values: list[float] = []

    def loss(self, model, batch, reference):
        if reference is None:
            raise SSUError("regularizer 'kl' needs the reference model theta_(t-1)")
        rows = draw_rows(self.rows, self.rng, self.args.windows, batch)
        kl = continuation_kl(model, reference, make_batch(rows, self.pad_id).to(batch.input_ids.device))
        self.values.append(kl.item())
        return self.args.lam * chunk_share(batch) * kl, {"retain_kl": kl.item()}

    def record(self) -> dict:
        mean = sum(self.values) / len(self.values) if self.values else 0.0
        return {"lambda": self.args.lam, "windows": self.args.windows, "mean_kl": round(mean, 6)}
