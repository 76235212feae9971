"""Momentum-SAM (ssu/engine/sharpness.py): the nudge is ρ along AdamW's first moment, and it is
taken back to within one float32 rounding; realistic magnitudes (N(0, 0.02) weights, gradients
of 1e-5, lr 1e-5)."""

from __future__ import annotations

import pytest
import torch

from ssu.config import TrainSettings
from ssu.engine.sharpness import momenta, nudged
from ssu.errors import SSUError


def _stepped(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(256, 128, generator=g) * 0.02),
              torch.nn.Parameter(torch.randn(128, generator=g) * 0.02)]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, foreach=False)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-5
    opt.step()
    return params, opt


def test_nudge_is_rho_along_the_first_moment_and_comes_back():
    params, opt = _stepped()
    before = [p.detach().clone() for p in params]
    moms = momenta(opt, params)
    rho = 0.05
    with nudged(opt, params, rho) as r:
        assert r == rho
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]).double()
        m = torch.cat([x.flatten() for x in moms]).double()
        assert moved.norm().item() == pytest.approx(rho, rel=1e-5)
        assert torch.nn.functional.cosine_similarity(moved, m, dim=0).item() == pytest.approx(1.0, abs=1e-6)
    for p, b in zip(params, before):  # back within one float32 rounding of each weight
        ulp = torch.finfo(torch.float32).eps * b.abs().clamp(min=rho)
        assert ((p.detach() - b).abs() <= ulp).all()


def test_no_nudge_without_a_moment_or_at_rho_zero():
    params, opt = _stepped()
    before = [p.detach().clone() for p in params]
    with nudged(opt, params, 0.0) as r:
        assert r == 0.0 and all(torch.equal(p, b) for p, b in zip(params, before))
    fresh = [torch.nn.Parameter(torch.randn(8, 8) * 0.02)]
    fresh_opt = torch.optim.AdamW(fresh, lr=1e-5)
    copy = fresh[0].detach().clone()
    with nudged(fresh_opt, fresh, 0.05) as r:  # the first optimizer step: no moment yet
        assert r == 0.0 and torch.equal(fresh[0], copy)


def test_nudge_is_taken_back_when_the_block_raises():
    params, opt = _stepped()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError), nudged(opt, params, 0.05):
        raise RuntimeError("a failed backward")
    assert all(torch.allclose(p, b, rtol=0, atol=1e-8) for p, b in zip(params, before))


def test_negative_rho_is_refused():
    with pytest.raises(SSUError, match="sam_rho"):
        TrainSettings(sam_rho=-0.1)
