"""Momentum-SAM: each optimizer step's gradient taken at weights nudged toward where the loss rises.

A removal that reverses after six steps of fine-tuning on a quarter of the book sits in a
sharp valley of its own loss: a small move (the relearning attack's) climbs straight back
out. Sharpness-aware minimization trains for a flat valley instead -- min_θ max_{‖δ‖≤ρ}
L(θ + δ) -- and Fan et al. (ICML 2025, "Towards LLM unlearning resilient to relearning
attacks: a sharpness-aware minimization perspective") measured that it makes unlearning
resist relearning. SAM's δ is ρ·∇L/‖∇L‖, which costs a second forward and backward per step
and a copy of the gradient; Momentum-SAM (Becker et al. 2024) takes the ascent direction
from the optimizer's running mean of the gradient instead -- AdamW's ``exp_avg``, which a
full fine-tune holds anyway -- so the step costs nothing extra and keeps nothing extra:
δ = ρ·m/‖m‖ (‖m‖ over every trainable tensor, all processes), added to the weights in
place before the step's forwards and taken off after its last backward, before the mask,
clipping and AdamW see the gradient. The first step (no moment yet) is not perturbed.

Trainable weights in ssu are always float32 (full fine-tunes of half-precision models keep
float32 master weights; LoRA factors are float32), so the nudge and its removal are
float32 arithmetic: the weights come back within one float32 rounding of where they were
(``p + c·m − c·m``; the product is the same both times), about 1e-9 for a weight of 0.02
-- far below an AdamW step at lr 1e-5. Hand-written because no kept library has it
(torch ships no SAM; the SAM packages on PyPI take the second backward and the copy).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ssu.engine.saliency import chunk_views, local


def momenta(optimizer, params: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """AdamW's first moment of every trainable tensor, or None before the first step."""
    state = getattr(optimizer, "optimizer", optimizer).state  # accelerate wraps the optimizer
    out = [state.get(p, {}).get("exp_avg") for p in params]
    return None if any(m is None for m in out) else out


@contextmanager
def nudged(optimizer, params: list[torch.Tensor], rho: float, procs=None):
    """The weights moved by ρ·m/‖m‖ inside the block, back where they were after it (rho 0: untouched)."""
    moms = momenta(optimizer, params) if rho > 0 else None
    if moms is None:
        yield 0.0
        return
    sq = sum((c.float() ** 2).sum() for m in moms for c in chunk_views(local(m)))
    if procs is not None and procs.sharded:  # each process holds a shard of every moment
        sq = procs.sum(sq.to(procs.device))
    norm = math.sqrt(float(sq))
    if norm == 0.0:
        yield 0.0
        return
    scale = rho / norm
    with torch.no_grad():
        for p, m in zip(params, moms):
            p.add_(m, alpha=scale)
    try:
        yield rho
    finally:
        with torch.no_grad():
            for p, m in zip(params, moms):
                p.sub_(m, alpha=scale)
