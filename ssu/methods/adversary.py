"""The weights one relearning step away: where a forget term must hold as well as at θ.

A removal that only hides the book is undone by a few optimizer steps on a little of it
(the ``relearn`` probe: AdamW on a slice of the removed book). Sharpness-aware unlearning
(Fan et al., ICML 2025) takes the forget loss at θ + δ, δ the step that most undoes the
removal, so the minimum found is flat in that direction. Here δ is built from an
objective the caller chooses (the log-probability of the tokens being trained down, or of
the book's own continuations -- what the attacker fine-tunes on), in one of two shapes:

- ``l2``: δ = ρ g / ‖g‖ over every trainable weight -- SAM's inner step (norm ρ).
- ``sign``: δ = ρ sign(g) -- every weight moved by ρ: AdamW's first step from fresh moments
  is lr · sign(g) (m / √v = g / |g|), so ρ = k · lr is about k of the attacker's steps
  while its gradient keeps its sign (10 steps at lr 1e-4: ρ 1e-3). The attacker's geometry,
  where ``l2`` puts the whole step on the few weights with the largest gradients.

The moved weights are summed in float32 and rounded once to each parameter's dtype;
nothing is changed in place, and gradients reach θ through θ + δ (δ held fixed, as in SAM).
Written here because no kept library has it: SAM implementations (torch-optimizer, timm)
step the optimizer's own loss in place, not a second objective through ``functional_call``.
"""

from __future__ import annotations

import torch

STEPS = ("l2", "sign")


def relearned_params(model, objective: torch.Tensor, rho: float, step: str = "l2") -> dict[str, torch.Tensor] | None:
    """name -> θ + δ for every trainable weight the ``objective`` reaches (δ raises it; see the
    module docstring for ``step``), or None when its gradient is zero or not finite. The graph
    of ``objective`` is kept (the caller backpropagates its own loss through it next)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(objective, list(params.values()), retain_graph=True, allow_unused=True)
    pairs = [(n, p, g) for (n, p), g in zip(params.items(), grads) if g is not None]
    if not pairs:
        return None
    norm = torch.sqrt(sum((g.float() ** 2).sum() for _, _, g in pairs))
    if not torch.isfinite(norm) or norm == 0:
        return None
    if step == "sign":
        return {n: (p.float() + rho * g.float().sign()).to(p.dtype) for n, p, g in pairs}
    scale = rho / norm
    return {n: (p.float() + g.float() * scale).to(p.dtype) for n, p, g in pairs}
