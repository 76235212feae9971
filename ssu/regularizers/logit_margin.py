"""Keep the greedy continuation of retain windows: a hinge on each token's logit margin.

A window's greedy continuation is its text exactly when, teacher-forced, every continuation
token is the argmax -- its logit above every other token's, a positive *margin*
``z_y − max_{j≠y} z_j``. Greedy ROUGE (and a calibration floor read from it) changes at
the first token whose margin crosses zero, and then everything after it. ``kl`` keeps the
whole next-token distribution near θ_{t−1}'s, on average over tokens; a handful of tokens
whose margin is already small can cross zero while the mean KL stays tiny (Gutenberg: a
pooled window of a book not yet removed flips at α 0.3 of a step trained with ``kl`` at
λ 10). This term acts on those tokens only:

    λ · mean over labelled tokens of  max(0, min(m₀, cap) − m)

where m is the margin under the model being trained and m₀ θ_{t−1}'s, cached once per
step (one float32 per labelled token of the retain rows: no model copy, nothing per
parameter). A token only has to keep the margin it had, and never more than ``cap``:
confident tokens cost nothing, a token θ_{t−1} already got wrong is not pushed to learn
(its target is its own negative margin).

It protects the model being trained. For methods whose trained model is the removal
(``suppress``, ``ga``, ``npo``: α ≤ 1 interpolates toward it) that is the model applied;
SSU's fine-tune *learns* the book and is negated, and a hinge is not symmetric in ±τ,
so with ``ssu`` it holds only to first order.

Parameters (``Args``): ``lam`` (λ, default 1), ``cap`` (default 2.0: logits), ``windows``
(retain rows per chunk; default: as many as forget windows in it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ssu.engine.losses import LEARN, make_batch
from ssu.errors import SSUError
from ssu.regularizers.base import REGULARIZERS, Regularizer, chunk_share, draw_indices, require_retain
from ssu.regularizers.kl import labelled_logits


@dataclass
class MarginArgs:
    lam: float = 1.0  # λ: weight of the hinge term
    cap: float = 2.0  # a token keeps min(its θ_{t−1} margin, cap), in logits
    windows: int | None = None  # retain rows per chunk; None: as many as its forget windows

    def __post_init__(self) -> None:
        if self.lam < 0 or self.cap <= 0 or (self.windows is not None and self.windows < 1):
            raise SSUError("logit-margin: lam must be >= 0, cap > 0 and windows >= 1")


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per position: the target's logit minus the largest other logit (> 0: the target is the argmax)."""
    own = logits.gather(-1, targets[:, None]).squeeze(-1)
    other = logits.scatter(-1, targets[:, None], float("-inf")).amax(-1)
    return own - other


def _targets(batch) -> torch.Tensor:
    return batch.labels[:, 1:][batch.labels[:, 1:] != -100]


@torch.no_grad()
def reference_margins(model, batch) -> torch.Tensor:
    """θ's margins at one batch's labelled positions (float32), in eval mode."""
    was_training = model.training
    model.eval()
    batch = batch.to(next(model.parameters()).device)
    out = margins(labelled_logits(model, batch), _targets(batch))
    model.train(was_training)
    return out.cpu()


def margin_hinge(model, batch, floor: torch.Tensor) -> torch.Tensor:
    """Mean over labelled tokens of max(0, floor − margin under ``model``)."""
    m = margins(labelled_logits(model, batch), _targets(batch))
    return torch.relu(floor.to(m.device) - m).mean()


@REGULARIZERS.register("logit-margin", description="add λ·mean max(0, min(m_(t-1), cap) − m) on retain windows' "
                                             "logit margins: keep their greedy continuations")
class RetainMargin(Regularizer):
    Args = MarginArgs
    needs_retain = True
    has_loss = True

    def prepare(self, model, fs) -> None:
        require_retain(self.name, fs)
        self.rows, self.pad_id, self.values = list(fs.retain), fs.pad_id, []
        self.rng = random.Random(self.seed + fs.step)  # the rows each backward draws
        self.floors = [reference_margins(model, make_batch([(r, LEARN)], self.pad_id)).clamp(max=self.args.cap)
                       for r in self.rows]

    def loss(self, model, batch, reference):
        picks = draw_indices(len(self.rows), self.rng, self.args.windows, batch)
        rows = make_batch([(self.rows[i], LEARN) for i in picks], self.pad_id).to(batch.input_ids.device)
        hinge = margin_hinge(model, rows, torch.cat([self.floors[i] for i in picks]))
        self.values.append(hinge.item())
        return self.args.lam * chunk_share(batch) * hinge, {"retain_margin": hinge.item()}

    def state_bytes(self) -> int:
        """Bytes of the cached floors: one float32 per labelled retain token."""
        return sum(f.numel() * f.element_size() for f in getattr(self, "floors", []))

    def record(self) -> dict:
        mean = sum(self.values) / len(self.values) if self.values else 0.0
        return {"lambda": self.args.lam, "cap": self.args.cap, "windows": self.args.windows,
                "rows": len(getattr(self, "floors", [])), "mean_hinge": round(mean, 6)}
