"""Probes move the expected way on the memorized tiny model: the worst case is at or above greedy,
a memorized book comes back from shifted prompts and from samples, 4-bit rounding changes the
logits (more than 8-bit), and relearning gives back more of a removed book than of a book the
model never saw; their rows land in results.jsonl like every metric."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from ssu.errors import SSUError
from ssu.eval.memorization import rouge_l_scores
from ssu.eval.probes import PROBES, WORST, worst_case_metrics
from ssu.eval.probes.quantized import quantizable, quantize_weights
from ssu.eval.probes.relearn import attacker_slice, relearn
from ssu.eval.probes.shifted import VARIANTS, variant
from ssu.models.loading import load_model, load_tokenizer
from ssu.recipes.compose import load_composed
from ssu.recipes.evaluate import evaluate_step
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step

PROBED = ["shifted", {"name": "sampled", "args": {"k": 4}}, "quantized", "rounded",
          {"name": "relearn", "args": {"steps": 4, "lr": 1e-3}}, "teacher"]


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_continues_with_the_text_that_follows_it(name):
    prompt = "one two three four five six seven eight"
    continuation = "nine ten eleven twelve"
    p, ref = variant(name, prompt, continuation, tail_words=3, shift_words=2)
    whole = " ".join((prompt + " " + continuation).split())
    if name == "lower":
        assert p == prompt.lower() and ref == continuation
    else:
        assert whole.endswith(" ".join((p + " " + ref).split())), (p, ref)
        assert len(ref.split()) == {"earlier": 6, "later": 2}.get(name, 4)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, init_test_run):
    """Step 1 of plain ssu, evaluated with every probe; step 0 with the memorized books probed too."""
    run = init_test_run(tmp_path_factory.mktemp("probes") / "run", "ssu",
                        eval={"enabled": True, "probes": PROBED, "model_metrics": [],
                              "probe_sets": ["removed-now", "future", "heldout"]})
    evaluate_step(run, 0, progress=False)
    run_step(run, 1, progress=False)
    evaluate_step(run, 1, progress=False)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return run, {(r["step"], r["book"], r["set"], r["metric"]): r for r in rows}


def test_every_probe_writes_rows_with_n_and_interval(probed):
    run, rows = probed
    metrics = {m for p in PROBES for m in p.outputs}
    for metric in metrics | {WORST}:
        got = [r for k, r in rows.items() if k[0] == 1 and k[2] == "removed-now" and k[3] == metric]
        assert got, metric
        assert all(r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] >= 1 for r in got)
    per_window = [json.loads(line) for line in (run / "step_1" / "probes.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in per_window} == metrics


def test_worst_case_is_the_max_over_greedy_and_the_probes(probed):
    run, rows = probed
    for (step, book, set_, metric), r in rows.items():
        if metric == WORST:
            greedy = rows[(step, book, set_, "rougeL_f")]["value"]
            assert r["value"] >= greedy - 1e-9
            for m in ("probe:shifted", "probe:sampled", "probe:int4", "probe:int8", "probe:rounded"):
                assert r["value"] >= rows[(step, book, set_, m)]["value"] - 1e-9
    # per window, recomputed from the files
    greedy = {}
    from ssu.eval.probes import rouge_l

    for g in (run / "step_1" / "generations.jsonl").read_text().splitlines():
        g = json.loads(g)
        greedy[(g["set"], g["book"], g["window"])] = rouge_l(g["output"], g["reference"])
    best = defaultdict(float)
    for line in (run / "step_1" / "probes.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["metric"] in worst_case_metrics():  # not relearn, sampled-extracted or teacher
            key = (r["set"], r["book"], r["window"])
            best[key] = max(best[key], r["value"], greedy[key])
    by_book = defaultdict(list)
    for (set_, book, _), v in best.items():
        by_book[(book, set_)].append(v)
    for (book, set_), vs in by_book.items():
        assert rows[(1, book, set_, WORST)]["value"] == pytest.approx(sum(vs) / len(vs), abs=1e-6)


def test_memorized_book_comes_back_under_shifted_prompts_and_sampling(probed):
    _, rows = probed
    future = [k for k in rows if k[0] == 0 and k[2] == "future" and k[3] == "rougeL_f"]
    assert future
    for step, book, set_, _ in future:
        assert rows[(step, book, set_, "rougeL_f")]["value"] >= 0.9
        assert rows[(step, book, set_, "probe:shifted")]["value"] >= 0.9  # the memorizer under varied prompts
        assert rows[(step, book, set_, "probe:sampled")]["value"] >= 0.8
        assert rows[(step, book, set_, "probe:sampled-extracted")]["value"] >= 0.8


def test_teacher_forcing_ranks_a_memorized_book_first_and_held_out_text_less(probed):
    _, rows = probed
    future = [k for k in rows if k[0] == 0 and k[2] == "future" and k[3] == "probe:teacher"]
    heldout = [k for k in rows if k[0] == 0 and k[2] == "heldout" and k[3] == "probe:teacher"]
    assert future and heldout
    assert min(rows[k]["value"] for k in future) >= 0.9  # memorized: nearly every token first
    assert max(rows[k]["value"] for k in heldout) < min(rows[k]["value"] for k in future) - 0.3


def test_top1_shares_are_the_argmax_matches_batched_or_one_at_a_time(synthetic_world):
    """Padded batches of windows of different lengths give each window's own share, as a hand
    computation on it alone: continuation tokens whose logit is the row's largest."""
    from data_prep import read_window_rows
    from ssu.engine.encoding import encode_pair
    from ssu.eval.probes.teacher import top1_shares

    tokenizer = load_tokenizer(str(synthetic_world.memorized))
    model = load_model(str(synthetic_world.memorized), "cpu", "float32")
    windows = read_window_rows(synthetic_world.prepared)[:5]
    windows[1] = {**windows[1], "continuation": " ".join(windows[1]["continuation"].split()[:7])}  # shorter row
    want = []
    for w in windows:
        e = encode_pair(tokenizer, w["prompt"], w["continuation"], 512)
        with torch.no_grad():
            logits = model(torch.tensor([e.ids])).logits[0, e.n_prompt - 1 : -1]
        want.append((logits.argmax(-1) == torch.tensor(e.ids[e.n_prompt :])).float().mean().item())
    assert top1_shares(model, tokenizer, windows, 512, batch_size=5) == pytest.approx(want, abs=1e-6)
    assert top1_shares(model, tokenizer, windows, 512, batch_size=1) == pytest.approx(want, abs=1e-6)
    assert 0 < min(want) and max(want) <= 1


def test_four_bit_rounding_changes_the_logits_more_than_eight_bit(synthetic_world):
    tokenizer = load_tokenizer(str(synthetic_world.memorized))
    ids = torch.tensor([tokenizer("the book of the year was written", add_special_tokens=True)["input_ids"]])
    logits = {}
    for bits in (None, 8, 4):
        model = load_model(str(synthetic_world.memorized), "cpu", "float32")
        if bits:
            assert quantize_weights(model, bits) == len(quantizable(model)) > 0
        with torch.no_grad():
            logits[bits] = model(ids).logits
    d8, d4 = ((logits[b] - logits[None]).abs().max().item() for b in (8, 4))
    assert 0 < d8 < d4


def test_relearning_gives_back_more_of_a_removed_book_than_of_one_never_seen(synthetic_world, init_test_run,
                                                                             tmp_path):
    """The same slice, the same steps: the unlearned model (book hidden) against the model before
    memorization (the book never seen); measured on the book's other windows."""
    run = init_test_run(tmp_path / "run", "ssu", calibrate={"enabled": True, "fraction": 0.3, "iterations": 4})
    run_step(run, 1, progress=False)
    from data_prep import windows_for

    book = RunDir(run).step_record(1)["books"][0]
    windows = [{**w, "set": "removed-now", "goal": "forget"} for w in windows_for(synthetic_world.prepared, [book])]
    taken = attacker_slice(windows, 0.34, seed=0)
    slice_ = [w for w in windows if ("removed-now", w["book"], w["window"]) in taken]
    rest = [w for w in windows if ("removed-now", w["book"], w["window"]) not in taken]
    tokenizer = load_tokenizer(str(synthetic_world.memorized))
    after = {}
    for name, model in (("unlearned", load_composed(RunDir(run), upto=1)),
                        ("never seen", load_model(str(synthetic_world.tiny), "cpu", "float32"))):
        before = sum(rouge_l_scores(model, tokenizer, rest)) / len(rest)
        relearn(model, tokenizer, slice_, steps=6, lr=1e-3, batch_size=2, max_length=512, seed=0)
        after[name] = sum(rouge_l_scores(model, tokenizer, rest)) / len(rest)
        if name == "unlearned":
            assert before < 0.6  # removed before relearning
    assert after["unlearned"] > after["never seen"] + 0.2, after


def test_relearning_over_a_grid_of_rates_reports_the_rate_that_brings_the_book_back(synthetic_world, init_test_run,
                                                                                    tmp_path):
    """A rate too large for the model wipes the book out rather than relearning it (the pretrained
    world at 1e-3); over a grid the probe reports the rate whose removed windows came back furthest,
    window by window the same scores as that rate alone."""
    from data_prep import load_schedule, windows_for
    from ssu.config.loader import ComponentSpec
    from ssu.eval.probes import ProbeContext
    from ssu.recipes.components import build_probes

    cfg = RunDir(init_test_run(tmp_path / "run", "ssu")).config
    book = load_schedule(synthetic_world.prepared)["steps"][1][0]
    windows = [{**w, "set": "removed-now", "goal": "forget"} for w in windows_for(synthetic_world.prepared, [book])]
    tokenizer = load_tokenizer(str(synthetic_world.memorized))

    def load():
        return load_model(str(synthetic_world.memorized), "cpu", "float32")

    def probe(**args):
        (p,) = build_probes([ComponentSpec("relearn", {"steps": 3, "batch_size": 2, **args})])
        return p.scores(load(), tokenizer, ProbeContext(cfg, 1, windows, 0, load=load))

    wiped, kept = probe(lr=0.1), probe(lr=1e-5)
    mean = lambda scores: sum(s.value for s in scores) / len(scores)  # noqa: E731
    assert mean(wiped) < 0.5 < 0.9 < mean(kept), (mean(wiped), mean(kept))
    grid = probe(lrs=[0.1, 1e-5])
    assert [s.value for s in grid] == [s.value for s in kept]
    assert {s.detail["lr"] for s in grid} == {1e-5}
    assert grid[0].detail["by_lr"] == {"0.1": round(mean(wiped), 6), "1e-05": round(mean(kept), 6)}
    # the default is the grid (one rate only when asked); without a loader a grid is refused, one rate is not
    rates = lambda **args: build_probes([ComponentSpec("relearn", args)])[0].args.rates()  # noqa: E731
    assert rates() == [3e-5, 1e-4, 3e-4, 1e-3] and rates(lr=1e-5) == [1e-5] and rates(lr=1e-5, lrs=[0.1]) == [0.1]
    (default,) = build_probes([ComponentSpec("relearn", {"steps": 1})])
    with pytest.raises(SSUError, match="a grid of rates needs a fresh model"):
        default.scores(load(), tokenizer, ProbeContext(cfg, 1, windows, 0))
    for bad in ({"lr": 0.0}, {"lrs": []}, {"lrs": [1e-4, -1.0]}):
        with pytest.raises(SSUError, match="relearn: "):
            build_probes([ComponentSpec("relearn", bad)])
