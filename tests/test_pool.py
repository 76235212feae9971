"""``generic.others``: the other books not yet removed join the retain pool on their calibration side.

Pinned here: the pooled windows are exactly the calibration side of the split each book's own
step later records (so its audit side is never seen by the recipe); the calibration floor gets
one group per pooled book, each window read at ``calibrate.keep_offsets``, and with
``generic.check`` the floor reads windows the regularizers never got; with
``calibrate.keep_from: memorized`` later steps' floors carry the first step's readings; evaluation grades a
pooled book on its audit side only; and the pool moves the books not yet removed less than the
retain books alone do, at the same α (``protect``: its Fisher then covers them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import forget_set_of

from data_prep import read_window_rows
from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch
from ssu.models.loading import load_tokenizer
from ssu.recipes.compose import load_composed
from ssu.recipes.eval_windows import evaluation_windows
from ssu.recipes.pool import other_splits, other_windows
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.recipes.targets import mean_score

PROTECT = [{"name": "protect", "args": {"lam": 100.0, "fraction": 0.05, "windows": 64}}]


def test_pooled_windows_are_the_calibration_side_their_own_step_records(run_dir):
    run = run_dir(name="pooled", regularizers=PROTECT, generic={"others": 3},
                  calibrate={"enabled": True, "rouge": 0.2, "keep": 0.8, "iterations": 2, "alpha_max": 2.0},
                  eval={"enabled": True, "sets": ["removed-now", "future"], "probe_sets": []})
    cfg = RunDir(run).config
    splits, pooled = other_splits(cfg, 1), other_windows(cfg, 1)
    assert sorted(pooled) == sorted(splits) and len(pooled) == 2  # the books of steps 2 and 3
    for book, ws in pooled.items():
        assert len(ws) == 3 and all(w["role"] == "retain" for w in ws)
        assert {w["window"] for w in ws} <= set(splits[book]["calibration"])
    entry = run_step(run, 1, progress=False)
    retain = [w for w in read_window_rows(cfg.data) if w["role"] == "retain"]
    assert entry["regularizers"]["protect"]["windows"] == len(retain) + 2 * 3  # the retain books + the pool
    kept = entry["calibration"]["kept_window_ids"]
    assert set(kept) == {"retain", *pooled}
    for book in pooled:
        assert {w for _, w in kept[book]} <= set(splits[book]["calibration"])
    graded = [w for w in evaluation_windows(RunDir(run), 1) if w["set"] == "future"]
    for book in pooled:  # evaluation: the audit side only
        ids = {w["window"] for w in graded if w["book"] == book}
        assert ids and ids <= set(splits[book]["audit"])
    run_step(run, 2, progress=False)
    recorded = json.loads((run / "manifest.json").read_text())["steps"]["2"]["split"]
    for book, split in recorded.items():
        assert split == splits[book]


def test_check_windows_are_held_back_from_the_regularizers_for_the_floors(run_dir):
    from ssu.recipes.pool import checked

    run = run_dir(name="checked", regularizers=PROTECT, generic={"others": 3, "check": 1},
                  calibrate={"enabled": True, "rouge": 0.2, "keep": 0.8, "iterations": 2, "alpha_max": 2.0})
    cfg = RunDir(run).config
    pooled = other_windows(cfg, 1)
    protect, floor = checked(cfg, 1, pooled)
    assert checked(cfg, 1, pooled) == (protect, floor)  # seeded
    def ids(rows: list[dict]) -> set[int]:
        return {w["window"] for w in rows}

    for book, ws in pooled.items():
        assert len(floor[book]) == 1 and len(protect[book]) == 2
        assert ids(floor[book]) | ids(protect[book]) == ids(ws) and not ids(floor[book]) & ids(protect[book])
    entry = run_step(run, 1, progress=False)
    retain = [w for w in read_window_rows(cfg.data) if w["role"] == "retain"]
    assert entry["regularizers"]["protect"]["windows"] == len(retain) + 2 * 2  # the check windows are not in it
    kept = entry["calibration"]["kept_window_ids"]
    for book in pooled:  # each book's floor reads its check window alone
        assert {w for _, w in kept[book]} == {w["window"] for w in floor[book]}
    one = {b: ws[:1] for b, ws in pooled.items()}  # a book of one window: protected and checked
    assert checked(cfg, 1, one) == (one, one)


def test_anchored_floors_carry_the_first_steps_reading(run_dir):
    run = run_dir(name="anchored", regularizers=PROTECT, generic={"others": 3},
                  calibrate={"enabled": True, "rouge": 0.2, "keep": 0.8, "keep_from": "memorized",
                             "iterations": 2, "alpha_max": 2.0})
    first = run_step(run, 1, progress=False)["calibration"]
    second = run_step(run, 2, progress=False)["calibration"]
    assert first["anchors"] == first["checks"][0][1]  # at step 1: each group's reading at θ_0
    carried = {b for b in second["floors"] if second["kept_window_ids"][b] == first["kept_window_ids"].get(b)}
    assert carried and all(second["anchors"][b] == first["anchors"][b] for b in carried)
    for b, floor in second["floors"].items():  # keep x the anchor, or where the group is now when under it
        assert floor == pytest.approx(min(0.8 * second["anchors"][b], second["checks"][0][1][b]), abs=2e-6)


def _book_nll(model, world, step: int) -> float:
    tok = load_tokenizer(str(world.memorized))
    fs = forget_set_of(world.prepared, step, tok, with_random=False)
    with torch.no_grad():
        batch = make_batch([(e, LEARN) for e in fs.learn], tok.pad_token_id)
        nll, mask = forward_nll(model, batch)
        return float(group_mean_nll(nll, mask, batch, LEARN))


def test_the_pool_moves_books_not_yet_removed_less(run_dir, synthetic_world):
    # α 30 on the tiny world: each later book's NLL rises ~0.01 with the retain books alone
    alone = run_dir(name="alone", alpha=30.0, regularizers=PROTECT)
    pooled = run_dir(name="pooled", alpha=30.0, regularizers=PROTECT, generic={"others": 64})
    for r in (alone, pooled):
        run_step(r, 1, progress=False)
    base = {t: _book_nll(load_composed(RunDir(alone), upto=0), synthetic_world, t) for t in (2, 3)}
    hurt = {r.name: {t: _book_nll(load_composed(RunDir(r), upto=1), synthetic_world, t) - b
                     for t, b in base.items()} for r in (alone, pooled)}
    for t in base:  # measured 2.8x less on both books
        assert hurt["alone"][t] > 0 and hurt["pooled"][t] < 0.6 * hurt["alone"][t], hurt


def test_floors_read_each_window_at_keep_offsets(run_dir, synthetic_world):
    # with 2-3 windows a book one flipped continuation moves a floor by 0.4; read at several offsets
    # it moves by a share of that. The floor at α = 0 is the mean over every reading of every window.
    run = run_dir(name="steady", regularizers=PROTECT, generic={"others": 3},
                  calibrate={"enabled": True, "rouge": 0.2, "keep": 0.8, "keep_offsets": [0, 7, 15],
                             "iterations": 1, "alpha_max": 2.0})
    cal = run_step(run, 1, progress=False)["calibration"]
    cfg = RunDir(run).config
    rows = {(w["book"], w["window"]): w for w in read_window_rows(cfg.data)}
    model = load_composed(RunDir(run), upto=0)
    tok = load_tokenizer(str(synthetic_world.memorized))
    for group, ids in cal["kept_window_ids"].items():
        ws = [rows[(b, i)] for b, i in ids]
        steady = mean_score(model, tok, ws, cfg.train.max_length, offsets=[0, 7, 15])
        assert cal["checks"][0][1][group] == pytest.approx(steady, abs=1e-6)
        assert cal["floors"][group] == pytest.approx(0.8 * steady, abs=1e-6)


def test_recut_protects_the_whole_window_and_moves_its_first_half_less(run_dir, synthetic_world):
    # generic.prompt_words: kl reads a row's continuation tokens only, so a window cut as the books are leaves its
    # prompt half unprotected; re-cut to k prompt words, the protection reaches all but k words -- and at the same
    # α the pooled windows' first half moves less
    from ssu.engine.encoding import encode_pair
    from ssu.eval.logprobs import token_logprobs
    from ssu.recipes.pool import protected_rows, recut

    w = {"prompt": "a b c d e", "continuation": "f g h i j", "book": "x", "window": 0}
    assert recut(w, 2) == {**w, "prompt": "a b", "continuation": "c d e f g h i j"}
    assert recut(w, 50)["continuation"] == "j" and recut(w, 0)["prompt"] == "a"  # one word on either side at least
    kl = [{"name": "kl", "args": {"lam": 10.0, "reference": "cached"}}]
    runs = {k: run_dir(name=f"recut{k}", alpha=3.0, regularizers=kl, generic={"others": 3, "prompt_words": k})
            for k in (None, 3)}
    cfg = RunDir(runs[3]).config
    pooled = other_windows(cfg, 1)
    rows = protected_rows(cfg, [], pooled)
    assert [r["prompt"] + " " + r["continuation"] for r in rows] == \
        [p["prompt"] + " " + p["continuation"] for ws in pooled.values() for p in ws]
    assert all(len(r["prompt"].split()) == 3 for r in rows)
    tok = load_tokenizer(str(synthetic_world.memorized))
    windows = [p for ws in pooled.values() for p in ws]
    n_prompt = [encode_pair(tok, p["prompt"], p["continuation"], cfg.train.max_length).n_prompt for p in windows]

    def first_half(model) -> float:  # mean log-probability of each pooled window's prompt tokens after its first
        return float(np.mean([lp[: n - 1].mean() for lp, n in zip(token_logprobs(model, tok, windows, 512), n_prompt)]))

    rise = {}
    for k, run in runs.items():
        run_step(run, 1, progress=False)
        rise[k] = first_half(load_composed(RunDir(run), upto=0)) - first_half(load_composed(RunDir(run), upto=1))
    assert 0 < rise[3] < 0.9 * rise[None], rise  # measured: 0.091 against 0.113 nats
