"""Removal toward the never-seen level (the ``ssu-deep`` recipe's components).

- constrained calibration never accepts an α that lifts an earlier-removed book over its
  bound or takes the retain books under their floor (constructed score functions, including
  non-monotone ones), and never goes above the α that reaches the target; the scan finds the
  first crossing of a noisy score where bisection finds a later one, and with ``patience``
  steps over an isolated violation but never past a lasting one;
- the never-seen target is measured once on held-out windows and reused; the earlier
  books are checked on their own calibration windows only;
- the worst case over prompt variants is at least the greedy score of every window, and a
  window read at several offsets scores the mean of its readings;
- generic text joins the regularizers' retain pool;
- ``protect``: its bf16 Fisher matches the float32 one, it freezes exactly the entries over
  its threshold, holds 2 bytes per parameter, and moves retained text less than no
  protection;
- ``kl`` with cached reference distributions: exact against the frozen model when k covers
  the vocabulary, a lower bound otherwise, and it keeps retained text closer than no KL.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import forget_set_of, retain_nll

from ssu.config import CalibrateSettings
from ssu.engine.losses import LEARN, make_batch
from ssu.errors import SSUError
from ssu.models.loading import load_model, load_tokenizer
from ssu.recipes.calibrate import calibrate_alpha
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.recipes.targets import absolute_target, window_scores
from ssu.vectors import TaskVector

SETTINGS = CalibrateSettings(enabled=True, rouge=0.2, alpha_max=8.0, iterations=8)


def _check_record(record: dict, bounds: dict[str, float]) -> None:
    """The chosen α was measured, its check is within every bound, and it is the smallest
    admissible α tried that reaches the target (when one does)."""
    chosen = [c for c in record["checks"] if c[0] == round(record["alpha"], 6)]
    assert chosen and chosen[-1][2]
    assert all(v <= bounds[b] + 1e-9 for b, v in chosen[-1][1].items() if b in bounds)
    assert record["bounds"] == pytest.approx(bounds)
    if not record.get("constrained"):
        return
    limit = min(t[0] for t in record["trials"] if t[1] <= record["target"]) if any(
        t[1] <= record["target"] for t in record["trials"]) else max(t[0] for t in record["trials"])
    assert record["alpha"] <= limit + 1e-9  # never above the unconstrained answer
    reaching = sorted(t[0] for t, c in zip(record["trials"], record["checks"])
                      if c[2] and t[1] <= record["target"] and t[0] <= limit)
    if reaching:
        assert record["reached"] and round(record["alpha"], 6) == reaching[0]
    else:
        assert not record["reached"]


def test_constrained_calibration_never_lifts_an_earlier_book_over_its_bound():
    now = lambda a: max(0.0, 1.0 - a / 4)  # noqa: E731 -- reaches 0.2 at α = 3.2
    # book b is at 0.25 now (bound 0.25 > its target 0.2) and comes back above 2 < 3.2
    earlier = lambda a: {"b": 0.25 + 0.1 * max(0.0, a - 2.0)}  # noqa: E731
    record = calibrate_alpha(now, SETTINGS, earlier=earlier, levels={"b": 0.2})
    _check_record(record, {"b": 0.25})
    assert record["constrained"] and not record["reached"]
    assert 2.0 - 8.0 / 2**8 <= record["alpha"] <= 2.0  # as close to the bound as the bisection gets
    # a retain book held at >= 0.9 x its score at α = 0: it falls past that at α > 1.5
    kept = calibrate_alpha(now, SETTINGS, earlier=lambda a: {"r": 1.0 - 0.2 * max(0.0, a - 1.0)}, keep={"r": 0.9})
    assert kept["floors"] == {"r": 0.9} and kept["constrained"] and 1.5 - 8.0 / 2**8 <= kept["alpha"] <= 1.5
    assert [c for c in kept["checks"] if c[0] == round(kept["alpha"], 6)][-1][1]["r"] >= 0.9
    # anchored floors (keep_from: memorized): r is at 0.9 now, anchored at 1.0 -> floor 0.8 where the
    # step's own would be 0.72; r at 0.9 - 0.1 (α - 1) passes 0.8 at α 2 and 0.72 at α 2.8
    drop = lambda a: {"r": 0.9 - 0.1 * max(0.0, a - 1.0)}  # noqa: E731
    own = calibrate_alpha(now, SETTINGS, earlier=drop, keep={"r": 0.8})
    anchored = calibrate_alpha(now, SETTINGS, earlier=drop, keep={"r": 0.8}, anchors={"r": 1.0})
    assert own["floors"]["r"] == pytest.approx(0.72) and 2.8 - 8.0 / 2**8 <= own["alpha"] <= 2.8
    assert anchored["floors"]["r"] == pytest.approx(0.8) and 2.0 - 8.0 / 2**8 <= anchored["alpha"] <= 2.0
    assert anchored["anchors"] == {"r": 1.0} and "anchors" not in own
    # already under its anchored floor: it may not fall further, and α = 0 stays admissible
    under = calibrate_alpha(now, SETTINGS, earlier=lambda a: {"r": 0.7 - 0.1 * max(0.0, a - 1.0)},
                            keep={"r": 0.8}, anchors={"r": 1.0})
    assert under["floors"]["r"] == pytest.approx(0.7) and under["alpha"] <= 1.0 and under["checks"][0][2]
    # a model broken at large α satisfies every bound; the answer still stays below the target's α
    broken = calibrate_alpha(now, SETTINGS, earlier=lambda a: {"b": 0.25 + 0.1 * max(0.0, a - 2.0) if a < 7 else 0.0},
                             levels={"b": 0.2})
    assert broken["constrained"] and broken["alpha"] <= 2.0
    # a bound that does not bind changes nothing
    free = calibrate_alpha(now, SETTINGS, earlier=lambda a: {"b": 0.1}, levels={"b": 0.2})
    plain = calibrate_alpha(now, SETTINGS)
    assert free["alpha"] == plain["alpha"] and free["reached"] and "constrained" not in free


@pytest.mark.parametrize("seed", range(20))
def test_constrained_calibration_holds_for_non_monotone_books(seed):
    rng = random.Random(seed)
    knots = sorted(rng.uniform(0, 8) for _ in range(4))
    bumps = {b: [rng.uniform(-0.2, 0.3) for _ in knots] for b in ("b", "c")}

    def earlier(a: float) -> dict[str, float]:  # piecewise: rises and falls with α
        return {b: 0.3 + sum(h for k, h in zip(knots, hs) if a >= k) for b, hs in bumps.items()}

    levels, slope = {"b": 0.2, "c": 0.4}, rng.uniform(1, 10)
    record = calibrate_alpha(lambda a: max(0.0, 1.0 - a / slope), SETTINGS, earlier=earlier, levels=levels)
    assert 0.0 <= record["alpha"] <= SETTINGS.alpha_max
    _check_record(record, {b: max(levels[b], earlier(0.0)[b]) for b in levels})


def test_targets_and_worst_case_scores(synthetic_world):
    settings = CalibrateSettings(target="heldout", margin=0.05)
    assert absolute_target(settings, 0.9, {"level": 0.15}) == pytest.approx(0.2)
    assert absolute_target(CalibrateSettings(fraction=0.5), 0.9, None) == pytest.approx(0.45)
    model = load_model(str(synthetic_world.memorized), "cpu", "float32")
    tok = load_tokenizer(str(synthetic_world.memorized))
    windows = [w for w in map(json.loads, (synthetic_world.prepared / "windows.jsonl").read_text().splitlines())
               if w["role"] == "forget"][:4]
    greedy = window_scores(model, tok, windows, 128)
    worst = window_scores(model, tok, windows, 128, ["tail", "earlier", "lower"])
    assert len(worst) == 4 and all(w >= g for w, g in zip(worst, greedy))
    # offsets: per window, the mean of its readings (each reading scored on its own)
    from ssu.eval.memorization import rouge_l_scores
    from ssu.recipes.targets import slide

    later = rouge_l_scores(model, tok, [slide(w, 5) for w in windows], 128)
    both = window_scores(model, tok, windows, 128, offsets=[0, 5])
    assert both == pytest.approx([(g + x) / 2 for g, x in zip(greedy, later)])


def test_heldout_target_is_measured_once_and_earlier_books_are_checked(run_dir):
    calibrate = {"enabled": True, "target": "heldout", "margin": 0.05, "shifted": ["tail"], "earlier": True,
                 "windows": 4, "iterations": 4, "alpha_max": 8.0, "keep": 0.5}
    run = run_dir(calibrate=calibrate)
    first, second = run_step(run, 1, progress=False), run_step(run, 2, progress=False)
    level = first["calibration"]["never_seen"]
    assert level["measured_at_step"] == 1 and level["shifted"] == ["tail"]
    assert second["calibration"]["never_seen"] == level  # reused, not re-measured on a changed model
    assert first["calibration"]["target"] == pytest.approx(level["level"] + 0.05, abs=1e-6)
    # nothing removed before step 1: only the retain books' floor is checked
    assert all(set(c[1]) == {"retain"} for c in first["calibration"]["checks"])
    assert set(first["calibration"]["floors"]) == {"retain"} and not first["calibration"]["bounds"]
    cal = second["calibration"]
    book = first["books"][0]
    # the earlier book is checked on its own calibration windows, never on its audit windows
    ids = {w for _, w in cal["earlier_window_ids"][book]}
    assert ids <= set(first["split"][book]["calibration"]) and not ids & set(first["split"][book]["audit"])
    assert cal["checks"][0][0] == 0.0 and all(book in c[1] and "retain" in c[1] for c in cal["checks"])
    _check_record(cal, cal["bounds"])
    chosen = [c for c in cal["checks"] if c[0] == round(cal["alpha"], 6)][-1]
    assert chosen[1]["retain"] >= cal["floors"]["retain"] - 1e-9


def test_the_deep_recipe_is_written_into_the_config(run_dir):
    cfg = json.loads((run_dir(method="ssu-deep") / "config.json").read_text())["config"]
    assert cfg["preset"] == "ssu-deep" and cfg["method"]["name"] == "ssu"
    cal = cfg["calibrate"]
    assert cal["target"] == "heldout" and cal["earlier"] is True and cal["keep"] == 0.8 and cal["slack"] == 0.05
    assert [r["name"] for r in cfg["regularizers"]] == ["protect", "kl"]
    assert cfg["regularizers"][1]["args"]["reference"] == "cached"


# --- protect -------------------------------------------------------------------------------


def test_protect_fisher_mask_and_memory(synthetic_world):
    from ssu.regularizers.base import retain_fisher, sample
    from ssu.regularizers.protect import Protect, ProtectArgs

    model = load_model(str(synthetic_world.memorized), "cpu", "float32").requires_grad_(True)
    tok = load_tokenizer(str(synthetic_world.memorized))
    fs = forget_set_of(synthetic_world.prepared, 1, tok, with_random=False, retain=True)
    exact = retain_fisher(model, sample(fs.retain, 64, fs.step), fs.pad_id)  # before the mask's hooks
    reg = Protect(ProtectArgs(fraction=0.1, windows=64), seed=0)
    reg.prepare(model, fs)
    n = sum(p.numel() for p in model.parameters())
    assert reg.state_bytes() == 2 * n and reg.windows == len(fs.retain)
    for k, f in exact.items():  # bf16 storage of a float32-accumulated sum: 8 significant bits
        torch.testing.assert_close(reg.fisher[k].float(), f, rtol=2e-2, atol=1e-12 + 1e-3 * float(f.max()))
    assert 0.1 <= reg.frozen / n <= 0.12  # the top 10 % (plus ties at the threshold)
    # one optimizer step on the forget windows: exactly the entries over the threshold keep their bits
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    batch = make_batch([(e, LEARN) for e in fs.learn], fs.pad_id)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.input_ids)
    out.loss.backward()
    opt.step()
    reg.finish()
    moved = []
    for k, p in model.named_parameters():
        frozen = reg.fisher[k] >= reg.threshold
        assert torch.equal(p.detach()[frozen], before[k][frozen])
        moved.append(not torch.equal(p.detach()[~frozen], before[k][~frozen]))
    assert all(moved) or sum(moved) >= len(moved) - 2  # the rest moved (a bias may be frozen whole)
    # the damping scales the step's own vector in place: no second float32 copy of the weights
    g = torch.Generator().manual_seed(0)
    v = TaskVector({k: torch.randn(p.shape, generator=g) * 1e-5 for k, p in model.named_parameters()})
    expected = {k: v[k] * reg.damping(k) for k in v.keys()}
    ptrs = {k: v[k].data_ptr() for k in v.keys()}
    out = reg.vector(v, model)
    assert all(out[k].data_ptr() == ptrs[k] and torch.equal(out[k], expected[k]) for k in v.keys())


def _retain_nll(run, step: int, world) -> float:
    return retain_nll(load_composed(RunDir(run), upto=step), world)


@pytest.mark.parametrize("regularizer", [{"name": "protect", "args": {"lam": 100.0, "fraction": 0.05}},
                                         {"name": "kl", "args": {"lam": 10.0, "reference": "cached"}}])
def test_each_protection_moves_retained_text_less(run_dir, synthetic_world, regularizer):
    plain, kept = run_dir(name="plain", alpha=3.0), run_dir(name="kept", alpha=3.0, regularizers=[regularizer])
    for r in (plain, kept):
        run_step(r, 1, progress=False)
    base = _retain_nll(plain, 0, synthetic_world)
    hurt = {r.name: _retain_nll(r, 1, synthetic_world) - base for r in (plain, kept)}
    assert hurt["plain"] > 0 and hurt["kept"] < hurt["plain"], hurt


# --- kl with cached reference distributions ---------------------------------------------------


def test_cached_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below(synthetic_world):
    from ssu.regularizers.kl import cached_kl, continuation_kl, reference_topk

    reference = load_model(str(synthetic_world.memorized), "cpu", "float32").eval()
    model = load_model(str(synthetic_world.memorized), "cpu", "float32").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tok = load_tokenizer(str(synthetic_world.memorized))
    fs = forget_set_of(synthetic_world.prepared, 1, tok, with_random=False, retain=True)
    rows = fs.retain[:3]
    batch = make_batch([(r, LEARN) for r in rows], fs.pad_id)
    vocab = model.config.vocab_size
    with torch.no_grad():
        full = continuation_kl(model, reference, batch)
        whole = cached_kl(model, batch, [reference_topk(reference, make_batch([(r, LEARN)], fs.pad_id), vocab)
                                         for r in rows])
        top8 = cached_kl(model, batch, [reference_topk(reference, make_batch([(r, LEARN)], fs.pad_id), 8)
                                        for r in rows])
    assert float(full) > 0.01
    torch.testing.assert_close(whole, full, rtol=1e-4, atol=1e-6)
    assert 0 < float(top8) <= float(full) + 1e-6


def test_generic_text_joins_the_retain_pool_of_the_regularizers(run_dir, tmp_path):
    from data_prep.synth import synthetic_book
    from ssu.errors import SSUError

    generic = tmp_path / "generic"
    generic.mkdir()
    (generic / "g.txt").write_text(synthetic_book(0, "generic", 1, 400))
    reg = [{"name": "protect", "args": {"windows": 64}}]
    alone = run_step(run_dir(name="alone", regularizers=reg), 1, progress=False)["regularizers"]["protect"]
    joined = run_step(run_dir(name="joined", regularizers=reg, generic={"dir": str(generic), "windows": 5}), 1,
                      progress=False)["regularizers"]["protect"]
    assert joined["windows"] == alone["windows"] + 5
    with pytest.raises(SSUError, match="generic.dir: .*does not exist"):
        run_step(run_dir(name="bad", regularizers=reg, generic={"dir": str(tmp_path / "nope")}), 1, progress=False)


def test_scan_finds_the_first_crossing_of_a_noisy_score():
    scan = CalibrateSettings(enabled=True, rouge=0.2, alpha_max=64.0, iterations=4, search="scan", alpha_min=0.5)
    # falls to the target at α = 4, rises above it again on 5..40, and falls for good after
    noisy = lambda a: 1.0 - a / 5 if a <= 4 else (0.15 if a < 5 else 0.3 if a < 40 else 0.1)  # noqa: E731
    record = calibrate_alpha(noisy, scan)
    assert record["reached"] and 4.0 <= record["alpha"] <= 4.0 + (4.66 - 3.73) / 2**4  # the refined grid step
    assert calibrate_alpha(noisy, CalibrateSettings(enabled=True, rouge=0.2, alpha_max=64.0))["alpha"] >= 40
    # a bound that breaks on the way up stops the scan below it
    held = calibrate_alpha(noisy, scan, earlier=lambda a: {"b": 0.1 + 0.1 * (a > 2.0)}, levels={"b": 0.0})
    assert held["constrained"] and not held["reached"] and held["alpha"] <= 2.0
    _check_record(held, held["bounds"])
    never = calibrate_alpha(lambda a: 0.9, scan)
    assert not never["reached"] and never["alpha"] == 64.0


def test_scan_patience_steps_over_an_isolated_violation_and_never_past_a_lasting_one():
    scan = dict(enabled=True, rouge=0.2, alpha_max=64.0, iterations=4, search="scan", alpha_min=0.5, keep=0.8)
    now = lambda a: max(0.0, 1.0 - a / 4)  # noqa: E731 -- reaches 0.2 at α = 3.2
    # an earlier book over its bound 0.25 on [0.9, 1.3] only (grid points 0.98 and 1.22: one flipped window)
    blip = lambda a: {"b": 0.3 if 0.9 <= a <= 1.3 else 0.2}  # noqa: E731
    refused = calibrate_alpha(now, CalibrateSettings(**scan), earlier=blip, levels={"b": 0.2})
    assert refused["constrained"] and not refused["reached"] and refused["alpha"] < 0.9
    stepped = calibrate_alpha(now, CalibrateSettings(**scan, patience=2), earlier=blip, levels={"b": 0.2})
    assert stepped["reached"] and 3.2 <= stepped["alpha"] <= 3.2 + (3.73 - 2.98) / 2**4
    chosen = [c for c in stepped["checks"] if c[0] == round(stepped["alpha"], 6)][-1]
    assert chosen[2] and chosen[1]["b"] <= 0.25  # the α taken is one whose own check held
    # a violation that lasts to just short of the crossing (3.3 > 3.2): the refinement steps over it too
    late = lambda a: {"b": 0.3 if 2.0 <= a <= 3.3 else 0.2}  # noqa: E731
    crossed = calibrate_alpha(now, CalibrateSettings(**scan, patience=2), earlier=late, levels={"b": 0.2})
    assert crossed["reached"] and 3.3 < crossed["alpha"] <= 3.3 + (3.73 - 2.98) / 2**4
    assert calibrate_alpha(now, CalibrateSettings(**scan, patience=1), earlier=blip,
                           levels={"b": 0.2})["alpha"] < 0.9  # two failed points in a row: one is not enough
    # a floor broken for good from α 1 on (a model losing a kept book): patience never goes past it,
    # although the earlier book's upper bound holds again at large α
    lasting = lambda a: {**blip(a), "r": 1.0 if a < 1.0 else 0.5}  # noqa: E731
    held = calibrate_alpha(now, CalibrateSettings(**scan, patience=3), earlier=lasting, levels={"b": 0.2},
                           keep={"r": 0.8})
    assert held["constrained"] and not held["reached"] and held["alpha"] < 1.0
    assert all(not c[2] for c in held["checks"] if c[0] >= 1.0)
    with pytest.raises(SSUError, match="patience"):
        CalibrateSettings(enabled=True, search="scan", patience=2)  # no floors: a broken model would pass


def test_overshoot_goes_past_the_crossing_only_where_every_check_holds():
    scan = dict(enabled=True, rouge=0.2, alpha_max=4.0, iterations=4, search="scan", alpha_min=0.5)
    now = lambda a: max(0.0, 1.0 - a / 4)  # noqa: E731 -- reaches 0.2 at α = 3.2 (capped at 4)
    plain = calibrate_alpha(lambda a: max(0.0, 1.0 - a), CalibrateSettings(**scan))  # crosses at 0.8
    past = calibrate_alpha(lambda a: max(0.0, 1.0 - a), CalibrateSettings(**scan, overshoot=0.5))
    assert past["alpha"] == pytest.approx(1.5 * plain["alpha"]) and past["overshoot_from"] == plain["alpha"]
    assert past["trials"][-1][0] == round(past["alpha"], 6)  # the model is left at the α taken
    capped = calibrate_alpha(now, CalibrateSettings(**scan, overshoot=0.5))
    assert capped["alpha"] == 4.0 and capped["reached"]  # never over alpha_max
    # an earlier book lifted over its bound 0.25 above α 2: the overshoot is refused, the crossing kept
    lifts = lambda a: {"b": 0.3 if a > 2.0 else 0.2}  # noqa: E731
    for search in ("scan", "bisect"):
        record = calibrate_alpha(lambda a: max(0.0, 1.0 - a), CalibrateSettings(**{**scan, "search": search},
                                 overshoot=2.0), earlier=lifts, levels={"b": 0.2})
        assert record["reached"] and record["alpha"] <= 2.0 and "overshoot_from" not in record
        assert record["trials"][-1][0] == round(record["alpha"], 6)
        _check_record(record, record["bounds"])
    with pytest.raises(SSUError, match="overshoot"):
        CalibrateSettings(enabled=True, overshoot=-0.1)


def test_backoff_leaves_a_check_limited_alpha_off_the_edge_of_the_flip():
    scan = dict(enabled=True, rouge=0.2, alpha_max=8.0, iterations=6, search="scan", alpha_min=0.5)
    slow = lambda a: max(0.0, 1.0 - a / 8)  # noqa: E731 -- the target lies past the α where a bound breaks
    lifts = lambda a: {"b": 0.3 if a > 2.0 else 0.2}  # noqa: E731
    edge = calibrate_alpha(slow, CalibrateSettings(**scan), earlier=lifts, levels={"b": 0.2})
    assert edge["constrained"] and 1.9 < edge["alpha"] <= 2.0  # on the edge of the flip
    off = calibrate_alpha(slow, CalibrateSettings(**scan, backoff=0.2), earlier=lifts, levels={"b": 0.2})
    assert off["alpha"] == pytest.approx(0.8 * edge["alpha"]) and off["backed_off_from"] == edge["alpha"]
    assert off["trials"][-1][0] == round(off["alpha"], 6) and not off["reached"]
    _check_record(off, off["bounds"])
    # a bound that also breaks further down (non-monotone): the edge is kept rather than an α that breaks it
    both = lambda a: {"b": 0.3 if a > 2.0 or 1.55 < a < 1.65 else 0.2}  # noqa: E731 -- between grid points
    kept = calibrate_alpha(slow, CalibrateSettings(**scan, backoff=0.2), earlier=both, levels={"b": 0.2})
    assert kept["alpha"] == edge["alpha"] and "backed_off_from" not in kept
    assert kept["trials"][-1][0] == round(kept["alpha"], 6)
    unbounded = calibrate_alpha(slow, CalibrateSettings(**scan, backoff=0.2))  # nothing limits α: no backoff
    assert unbounded["reached"] and "backed_off_from" not in unbounded
    with pytest.raises(SSUError, match="backoff"):
        CalibrateSettings(enabled=True, backoff=1.0)


def test_a_window_read_later_is_the_same_text():
    from ssu.recipes.targets import slide

    w = {"book": "b", "window": 0, "prompt": "a b c d e f", "continuation": "g h i j k l"}
    later = slide(w, 2)
    assert later["prompt"] == "c d e f g h" and later["continuation"] == "i j k l"
    assert (later["prompt"] + " " + later["continuation"]).split() == "c d e f g h i j k l".split()
    assert slide(w, 99)["continuation"] == "l"  # at least one reference word is left


def test_the_onpolicy_preset_trains_on_its_own_decodes_and_never_extrapolates(run_dir):
    run = run_dir(method="suppress-onpolicy", calibrate={"windows": 2, "iterations": 1})
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["preset"] == "suppress-onpolicy" and cfg["method"]["args"]["teacher_weight"] == 0.0
    entry = run_step(run, 1, progress=False)
    assert entry["sign"] == 1 and 0 <= entry["alpha"] <= 1.0 and entry["regularizers"]["protect"]["lambda"] == 0.0
    losses = json.loads((run / "step_1" / "step.json").read_text())["train"]["losses"]
    # a third of the first epoch's decodes are the book's own words (measured 0.30), fewer by the last (0.07); no
    # teacher-forced term is trained
    assert losses[0]["rollout_book"] > 0.2 and all("suppress_kl" not in x and "rollout_ul" in x for x in losses)
    assert losses[-1]["rollout_book"] < losses[0]["rollout_book"]


def test_frozen_weights_stay_out_of_the_step_and_bad_patterns_are_one_line_errors(run_dir):
    from ssu.vectors.io import load_vector

    run = run_dir(alpha=3.0, train={"finetune": "full", "frozen": ["wte", "wpe"]})
    run_step(run, 1, progress=False)
    vector, _ = load_vector(RunDir(run).vector_path(1))
    names = set(vector.keys())
    assert names and not any("wte" in n or "wpe" in n for n in names)  # the rest of the model moved
    base, after = load_composed(RunDir(run), upto=0), load_composed(RunDir(run), upto=1)
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        assert torch.equal(base.get_parameter(name), after.get_parameter(name))
    with pytest.raises(SSUError, match="full fine-tune only"):
        run_dir(name="lora", train={"finetune": "lora", "frozen": ["wte"]})
    with pytest.raises(SSUError, match="not a regular expression"):
        run_step(run_dir(name="bad", train={"finetune": "full", "frozen": ["(wte"]}), 1, progress=False)
    with pytest.raises(SSUError, match="matches no parameter"):
        run_step(run_dir(name="none", train={"finetune": "full", "frozen": ["embed_tokens"]}), 1, progress=False)
