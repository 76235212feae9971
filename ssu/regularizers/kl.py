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
default: as many as forget windows in it), ``reference`` (below), ``pool``, ``topk``.

Memory, by ``reference``:

- ``model`` (default): a full fine-tune needs the frozen θ_{t−1} as a second copy of the
  model (a LoRA step switches its adapter off instead) -- 2 to 4 bytes per parameter.
- ``cached``: no copy. Before training, θ_{t−1}'s next-token distribution is computed once
  on a fixed ``pool`` of retain windows and kept per labelled token as its ``topk`` most
  likely tokens plus one bucket for the rest; the KL is then taken between the two
  distributions over those k + 1 outcomes (exact when k covers the vocabulary, a lower
  bound of the full KL otherwise: merging outcomes never raises a KL; measured within 1 %
  of the full KL at k = 64 on the demo model). Its size is pool × tokens × (8k + 4)
  bytes, independent of the model's (64 windows × 130 tokens × 516 B = 4.3 MB at k = 64),
  and each backward saves the frozen model's forward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.losses import LEARN, log_rest, make_batch
from ssu.engine.losses import labelled_logits as kept_logits
from ssu.errors import SSUError
from ssu.regularizers.base import (
    REGULARIZERS,
    Regularizer,
    chunk_share,
    draw_indices,
    draw_rows,
    require_retain,
    sample,
)


@dataclass
class KLArgs:
    lam: float = 1.0  # λ: weight of the KL term
    windows: int | None = None  # retain windows per chunk; None: as many as its forget windows
    reference: str = "model"  # "model": the frozen θ_{t−1}; "cached": its distributions, computed once
    pool: int = 64  # cached: retain windows whose reference distributions are kept
    topk: int = 64  # cached: tokens kept per position (the rest is one bucket)

    def __post_init__(self) -> None:
        if self.lam < 0 or (self.windows is not None and self.windows < 1):
            raise SSUError("kl: lam must be >= 0 and windows >= 1")
        if self.reference not in ("model", "cached") or self.pool < 1 or self.topk < 1:
            raise SSUError("kl: reference must be model or cached, pool and topk >= 1")


def continuation_kl(model, reference, batch) -> torch.Tensor:
    """Mean over labelled tokens of KL(p_reference ‖ p_model) of the next-token distribution."""
    logp = F.log_softmax(labelled_logits(model, batch), -1)
    with torch.no_grad():
        logq = F.log_softmax(labelled_logits(reference, batch), -1)
    return F.kl_div(logp, logq, log_target=True, reduction="batchmean")


def labelled_logits(model, batch) -> torch.Tensor:
    """The next-token logits (float32) at a batch's labelled positions, one row per labelled token.

    The LM head runs from the position that predicts the first label on (``logits_to_keep``,
    as the packed loss), and only the labelled positions are made float32: a retain row's logits
    over a 128k vocabulary are large (``kl`` cached's step peaked +2.62 bytes per parameter over
    plain ``ssu`` at the 1B shape on a GPU, when every position was kept and copied to float32)."""
    logits = kept_logits(model, batch)
    skipped = batch.input_ids.size(1) - logits.size(1)
    return logits[:, :-1][batch.labels[:, skipped + 1 :] != -100].float()


@torch.no_grad()
def reference_topk(model, batch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """θ's next-token distribution at one row's labelled positions: the ``k`` most likely
    tokens (int32 ids) and the log-probabilities of those k plus the rest's bucket (float32)."""
    was_training = model.training
    model.eval()
    logp = F.log_softmax(labelled_logits(model, batch.to(next(model.parameters()).device)), -1)
    model.train(was_training)
    top, ids = logp.topk(min(k, logp.shape[-1]), -1)
    return ids.to(torch.int32), torch.cat([top, log_rest(top)], -1)  # int32 ids: half the bytes, exact


def cached_kl(model, batch, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over labelled tokens of KL(p_ref ‖ p_model) over each position's cached top k + rest."""
    logq = F.log_softmax(labelled_logits(model, batch), -1)
    device = logq.device
    ids = torch.cat([c[0] for c in cache]).to(device, torch.int64)
    logp = torch.cat([c[1] for c in cache]).to(device)
    q_top = logq.gather(-1, ids)
    logq_k = torch.cat([q_top, log_rest(q_top)], -1)
    return (logp.exp() * (logp - logq_k)).sum(-1).mean()


@REGULARIZERS.register("kl", description="add λ·KL(p_θ(t-1) ‖ p_θ) on retain windows to every backward "
                                         "(open-unlearning's KL term)")
class RetainKL(Regularizer):
    Args = KLArgs
    needs_retain = True
    needs_reference = True
    has_loss = True

    def __init__(self, args=None, **kw):
        super().__init__(args, **kw)
        self.needs_reference = self.args is None or self.args.reference == "model"

    def prepare(self, model, fs) -> None:
        require_retain(self.name, fs)
        self.rows = list(fs.retain)
        self.pad_id = fs.pad_id
        self.rng = random.Random(self.seed + fs.step)
        self.values: list[float] = []
        self.cache = None
        if not self.needs_reference:
            self.rows = sample(self.rows, self.args.pool, self.seed + fs.step)
            self.cache = [reference_topk(model, make_batch([(r, LEARN)], self.pad_id), self.args.topk)
                          for r in self.rows]

    def loss(self, model, batch, reference):
        device = batch.input_ids.device
        if self.cache is not None:
            picks = draw_indices(len(self.rows), self.rng, self.args.windows, batch)
            kept = make_batch([(self.rows[i], LEARN) for i in picks], self.pad_id).to(device)
            kl = cached_kl(model, kept, [self.cache[i] for i in picks])
        else:
            if reference is None:
                raise SSUError("regularizer 'kl' needs the reference model theta_(t-1)")
            rows = draw_rows(self.rows, self.rng, self.args.windows, batch)
            kl = continuation_kl(model, reference, make_batch(rows, self.pad_id).to(device))
        self.values.append(kl.item())
        return self.args.lam * chunk_share(batch) * kl, {"retain_kl": kl.item()}

    def state_bytes(self) -> int:
        """Bytes of the cached reference distributions (0 with the frozen model, which is a copy)."""
        return sum(t.numel() * t.element_size() for c in self.cache or [] for t in c)

    def record(self) -> dict:
        mean = sum(self.values) / len(self.values) if self.values else 0.0
        return {"lambda": self.args.lam, "windows": self.args.windows, "reference": self.args.reference,
                "mean_kl": round(mean, 6)}
