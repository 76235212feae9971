"""What ``suppress`` trains toward: θ_{t−1}'s next-token distribution with the book's token taken out,
in full or cached as its top k (ssu/methods/suppress.py says why), and the hinge under the runner-up.

Written here because no kept library has them: open-unlearning's losses train toward ascent,
preferences or a steering vector, not toward the model's own distribution without the label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssu.engine.losses import IGNORE_INDEX, LEARN, log_rest, make_batch


def suppressed_target(ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log q: the reference's next-token log-distribution with each position's label taken out.

    ``ref_logits`` (tokens, vocab) and ``labels`` (tokens,) at labelled positions. Computed
    in float32; the label's entry is −inf, so it gets exactly zero probability.
    """
    masked = ref_logits.float().scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return F.log_softmax(masked, -1)


def suppression_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position KL(q ‖ p_θ) with q = :func:`suppressed_target` (0 where the label is ignored).

    ``logits`` / ``ref_logits`` (rows, width - 1, vocab) predict ``labels`` (rows, width - 1).
    """
    mask = labels != IGNORE_INDEX
    out = logits.new_zeros(labels.shape, dtype=torch.float32)
    if not mask.any():
        return out
    logq = suppressed_target(ref_logits[mask], labels[mask])
    logp = F.log_softmax(logits[mask].float(), -1)
    q = logq.exp()
    out[mask] = (q * (logq.clamp(min=torch.finfo(torch.float32).min) - logp)).sum(-1)
    return out


@torch.no_grad()
def cached_target(model, enc, pad_id: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q at one window's labelled positions as (ids of its top k, int32), (log q of those k and
    of the rest, float32) and (the labels, int64); the label itself is left out of the k."""
    was_training = model.training
    model.eval()
    batch = make_batch([(enc, LEARN)], pad_id).to(next(model.parameters()).device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    model.train(was_training)
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logq = suppressed_target(logits[mask], labels[mask])
    top, ids = logq.topk(min(k, logq.shape[-1] - 1), -1)  # q(label) = 0: never among them
    return ids.to(torch.int32).cpu(), torch.cat([top, log_rest(top)], -1).cpu(), labels[mask].cpu()


def cached_kl(logits: torch.Tensor, ids: torch.Tensor, logq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position KL(q ‖ p_θ) over the outcomes {the cached k, the label, the rest}; q(label) = 0."""
    logp = F.log_softmax(logits.float(), -1)
    p_top = logp.gather(-1, ids.to(logp.device, torch.int64))
    p_label = logp.gather(-1, labels.to(logp.device).unsqueeze(-1))
    logp_k = torch.cat([p_top, log_rest(torch.cat([p_top, p_label], -1))], -1)
    logq = logq.to(logp.device)
    return (logq.exp() * (logq - logp_k)).sum(-1)


def margin_hinge(logits: torch.Tensor, want: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, m + z_want − max z_other) per position: zero once the token ``want`` is ``margin`` nats of
    logit under the best other candidate (``logits`` (..., vocab), ``want`` (..., 1), computed in float32)."""
    lg = logits.float()
    gap = lg.gather(-1, want).squeeze(-1) - lg.scatter(-1, want, float("-inf")).amax(-1)
    return F.relu(margin + gap)
