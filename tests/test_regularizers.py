"""Each regularizer changes the step's update in the direction it is for, on the synthetic world.

- ``kl``: the retain windows' NLL moves less from θ_{t−1} than in the same step without it.
- ``retain-mask``: the frozen weights are exactly unchanged, and retained text moves less.
- ``guard``: at step 2 the book removed at step 1 ends further away (higher NLL) than
  without it; at step 1 (no earlier book) the step is bit-identical to the plain one.
- ``logit-margin``: retain tokens whose greedy prediction a gradient-ascent step flips are fewer, and
  its hinge (each token's logit margin below θ_{t−1}'s, capped) smaller, than without it.
- Regularizers compose: a method that ignores retain windows (``tv``) takes them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import forget_set_of

from ssu.engine.encoding import encode_pair
from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch
from ssu.models.loading import load_tokenizer
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.regularizers import REGULARIZERS
from ssu.vectors import load_vector


def _nll(model, world, role: str, book: str | None = None) -> float:
    from data_prep import read_window_rows

    tok = load_tokenizer(str(world.memorized))
    rows = [w for w in read_window_rows(world.prepared) if w["role"] == role and book in (None, w["book"])]
    enc = [(encode_pair(tok, w["prompt"], w["continuation"], 512), LEARN) for w in rows]
    with torch.no_grad():
        batch = make_batch(enc, tok.pad_token_id)
        nll, mask = forward_nll(model, batch)
        return float(group_mean_nll(nll, mask, batch, LEARN))


def _hurt(runs: dict, world, step: int = 1, role: str = "retain", book=None) -> dict[str, float]:
    base = _nll(load_composed(RunDir(next(iter(runs.values()))), upto=step - 1), world, role, book)
    return {name: _nll(load_composed(RunDir(r), upto=step), world, role, book) - base for name, r in runs.items()}


def test_every_regularizer_is_registered():
    assert set(REGULARIZERS.names()) >= {"fisher", "kl", "retain-mask", "guard", "logit-margin"}


def test_kl_to_the_previous_model_moves_retained_text_less(run_dir, synthetic_world):
    runs = {"plain": run_dir(name="plain"),
            "kl": run_dir(name="kl", regularizers=[{"name": "kl", "args": {"lam": 10.0}}])}
    entry = [run_step(r, 1, progress=False) for r in runs.values()][-1]
    rec = entry["regularizers"]["kl"]
    assert rec["lambda"] == 10.0 and rec["mean_kl"] > 0 and "retain_kl" in entry["final_loss"]
    hurt = _hurt(runs, synthetic_world)
    assert hurt["plain"] > 0 and hurt["kl"] < 0.8 * hurt["plain"]


def test_retain_mask_freezes_exactly_the_top_fisher_weights(run_dir, synthetic_world):
    runs = {"plain": run_dir(name="plain"),
            "mask": run_dir(name="mask", regularizers=[{"name": "retain-mask", "args": {"fraction": 0.2}}])}
    entry = [run_step(r, 1, progress=False) for r in runs.values()][-1]
    rec = entry["regularizers"]["retain-mask"]
    assert rec["frozen"] >= round(0.2 * rec["of"]) and rec["frozen"] < 0.21 * rec["of"]
    masked, _ = load_vector(RunDir(runs["mask"]).vector_path(1))
    plain, _ = load_vector(RunDir(runs["plain"]).vector_path(1))
    # The same Fisher, recomputed here: the frozen entries are exact zeros of the vector.
    from ssu.engine.saliency import topk_threshold
    from ssu.regularizers.base import retain_fisher, sample

    tok = load_tokenizer(str(synthetic_world.memorized))
    fs = forget_set_of(synthetic_world.prepared, 1, tok, with_random=False, retain=True)
    model = load_composed(RunDir(runs["mask"]), upto=0).requires_grad_(True)
    fisher = retain_fisher(model, sample(fs.retain, 16, 0), tok.pad_token_id)
    gamma = topk_threshold(list(fisher.values()), 0.2)
    frozen = {k: fisher[k] >= gamma for k in masked.keys()}
    assert sum(int(f.sum()) for f in frozen.values()) == rec["frozen"]
    assert all(bool((masked[k][frozen[k]] == 0).all()) for k in masked.keys())
    assert sum(int((plain[k][frozen[k]] != 0).sum()) for k in plain.keys()) > 0.01 * rec["frozen"]
    hurt = _hurt(runs, synthetic_world)
    assert hurt["mask"] < hurt["plain"]


def test_fisher_and_retain_mask_take_the_retain_fisher_once(run_dir, monkeypatch):
    """Together they share one Fisher (same windows, same seed) and make the same vector as
    when each takes its own."""
    from ssu.regularizers import base

    both = {"regularizers": ["fisher", {"name": "retain-mask", "args": {"fraction": 0.2}}]}
    shared, alone = run_dir(name="shared", **both), run_dir(name="alone", **both)
    calls = []
    real = base.retain_fisher
    monkeypatch.setattr(base, "retain_fisher", lambda *a: calls.append(1) or real(*a))
    run_step(shared, 1, progress=False)
    assert len(calls) == 1
    monkeypatch.setattr(base, "step_retain_fisher", lambda name, model, fs, windows, seed: (
        real(model, base.sample(fs.retain, windows, seed), fs.pad_id), min(windows, len(fs.retain))))
    for module in ("fisher", "retain_mask"):  # their own imported name
        monkeypatch.setattr(f"ssu.regularizers.{module}.step_retain_fisher", base.step_retain_fisher)
    run_step(alone, 1, progress=False)
    a, _ = load_vector(RunDir(shared).vector_path(1))
    b, _ = load_vector(RunDir(alone).vector_path(1))
    assert all(torch.equal(a[k], b[k]) for k in a.keys())


def test_guard_pushes_the_earlier_book_further_and_leaves_step_one_alone(run_dir, synthetic_world):
    runs = {"plain": run_dir(name="plain"),
            "guard": run_dir(name="guard", regularizers=[{"name": "guard", "args": {"weight": 1.0}}])}
    for t in (1, 2):
        entries = {n: run_step(r, t, progress=False) for n, r in runs.items()}
    assert entries["guard"]["regularizers"]["guard"]["books"] == ["synth_01"]
    one = [load_vector(RunDir(r).vector_path(1))[0] for r in runs.values()]
    assert all(torch.equal(one[0][k], one[1][k]) for k in one[0].keys())  # no earlier book at step 1
    hurt = _hurt(runs, synthetic_world, step=2, role="forget", book="synth_01")
    assert hurt["guard"] > hurt["plain"]


@pytest.mark.parametrize("method", ["tv", "ga"])
def test_a_loss_regularizer_composes_with_any_method(run_dir, method):
    entry = run_step(run_dir(method=method, name=method, regularizers=["kl"]), 1, progress=False)
    assert entry["method"] == method and entry["regularizers"]["kl"]["mean_kl"] >= 0


def _retain_margins(model, world) -> torch.Tensor:
    from data_prep import read_window_rows
    from ssu.regularizers.logit_margin import reference_margins

    tok = load_tokenizer(str(world.memorized))
    rows = [w for w in read_window_rows(world.prepared) if w["role"] == "retain"]
    return torch.cat([reference_margins(model, make_batch([(encode_pair(tok, w["prompt"], w["continuation"], 512),
                                                              LEARN)], tok.pad_token_id)) for w in rows])


def test_margin_keeps_the_retain_tokens_greedy_prediction(run_dir, synthetic_world):
    runs = {"plain": run_dir(method="ga", name="plain"),
            "margin": run_dir(method="ga", name="margin",
                              regularizers=[{"name": "logit-margin", "args": {"lam": 10.0, "cap": 2.0}}])}
    entry = [run_step(r, 1, progress=False) for r in runs.values()][-1]
    rec = entry["regularizers"]["logit-margin"]
    assert rec["rows"] > 0 and rec["mean_hinge"] >= 0 and "retain_margin" in entry["final_loss"]
    before = _retain_margins(load_composed(RunDir(runs["plain"]), upto=0), synthetic_world)
    after = {n: _retain_margins(load_composed(RunDir(r), upto=1), synthetic_world) for n, r in runs.items()}
    flipped = {n: int(((before > 0) & (m <= 0)).sum()) for n, m in after.items()}
    hinge = {n: float(torch.relu(before.clamp(max=2.0) - m).mean()) for n, m in after.items()}
    assert flipped["plain"] > 0 and flipped["margin"] < flipped["plain"], flipped
    assert hinge["margin"] < 0.5 * hinge["plain"], hinge


def test_margin_is_the_target_logit_over_the_best_other():
    from ssu.regularizers.logit_margin import margins

    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0], [1.0, 1.0, 0.0]])
    got = margins(logits, torch.tensor([0, 0, 1]))
    assert torch.allclose(got, torch.tensor([0.5, -4.0, 0.0]))  # a tie is not a greedy hit
