"""Evaluation sets and model-level metrics: registries, a user set and lm-eval, end to end on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ssu.cli import main
from ssu.errors import SSUError
from ssu.eval.model_metrics import MODEL_METRICS, higher_is_better
from ssu.eval.sets import get_eval_set
from ssu.recipes.init import resolve_config

LM_EVAL_TASKS = Path(__file__).resolve().parents[1] / "experiments" / "lm_eval"


@pytest.mark.parametrize("lookup, name, hint", [
    (get_eval_set, "retian", "Did you mean 'retain'?"),
    (MODEL_METRICS.get, "perplexty", "Did you mean 'perplexity'?"),
])
def test_unknown_names_get_did_you_mean(lookup, name, hint):
    with pytest.raises(SSUError, match=hint):
        lookup(name)


@pytest.mark.parametrize("over, message", [
    ({"sets": ["removed-now", "heldot"]}, "unknown evaluation set 'heldot'. Did you mean 'heldout'?"),
    ({"model_metrics": ["mia", "perplexty"]}, "unknown model metric 'perplexty'. Did you mean 'perplexity'?"),
    ({"metrics": ["rougel_f"]}, "Did you mean 'rougeL_f'?"),
    ({"extra_sets": {"retain": "x.jsonl"}}, "is a registered evaluation set"),
    ({"extra_sets": {"mine": "/nonexistent/x"}}, "is not a .jsonl file"),
    ({"model_metrics": [{"name": "lm_eval", "args": {"limit": 0}}]}, "lm_eval: limit must be >= 1"),
    ({"model_metrics": [{"name": "mia", "args": {"k": 1}}]}, "model metric mia takes no args"),
])
def test_config_validation_checks_eval_names(synthetic_world, tmp_path, over, message):
    with pytest.raises(SSUError, match=message.replace("(", r"\(").replace("?", r"\?")):
        resolve_config({"eval": over})
    # and through the CLI: one line, exit status 1
    args = ["init", str(tmp_path / "r"), "--model", str(synthetic_world.memorized), "--data",
            str(synthetic_world.prepared), "--set", f"eval={json.dumps(over)}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_directions_come_from_the_registries():
    assert higher_is_better("rougeL_f") is True
    assert higher_is_better("perplexity") is False and higher_is_better("mia_auc_loss") is False
    assert higher_is_better("lm_eval:x:acc", {"higher_is_better": True}) is True


@pytest.fixture(scope="module")
def evaluated(init_test_run, synthetic_world, tmp_path_factory):
    """Step 0 of a tiny run with a user set (two 'books') evaluated through `ssu eval`, plus lm-eval."""
    root = tmp_path_factory.mktemp("evalsets")
    extra = root / "extra"
    extra.mkdir()
    from data_prep import read_window_rows

    forget = [w for w in read_window_rows(synthetic_world.prepared) if w["book"] == "synth_01"][:2]
    (extra / "copy.jsonl").write_text("".join(
        json.dumps({"prompt": w["prompt"], "continuation": w["continuation"]}) + "\n" for w in forget))
    (extra / "novel.jsonl").write_text(json.dumps({"prompt": "a new prompt never seen", "continuation": "x y"}) + "\n")
    run = init_test_run(root / "run", eval={"enabled": True, "max_windows": 2, "metrics": ["rougeL_f"],
                                            "model_metrics": ["perplexity"],
                                            "extra_sets": {"probe": {"path": str(extra), "goal": "forget"}}})
    res = CliRunner().invoke(main, ["eval", str(run), "0"])
    assert res.exit_code == 0, res.output
    # lm-eval on the shipped offline task, its data resolved next to the task file (run from elsewhere)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        lm = CliRunner().invoke(main, ["eval", str(run), "0", "--lm-eval", "ssu_cloze",
                                       "--lm-eval-include", str(LM_EVAL_TASKS)])
    finally:
        mp.undo()
    return run, lm


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_user_set_is_generated_scored_and_reported(evaluated):
    run, _ = evaluated
    rows = _rows(run)
    probe = {(r["book"], r["metric"]): r for r in rows if r["set"] == "probe"}
    assert set(probe) == {(b, m) for b in ("probe/copy", "probe/novel") for m in ("rougeL_f", "perplexity")}
    assert probe[("probe/copy", "rougeL_f")]["value"] > 0.8  # memorized text, copied back
    assert probe[("probe/copy", "rougeL_f")]["n"] == 2 and probe[("probe/novel", "rougeL_f")]["n"] == 1
    gens = [json.loads(line) for line in (run / "step_0" / "generations.jsonl").read_text().splitlines()]
    assert sum(g["set"] == "probe" for g in gens) == 3
    assert {r["set"] for r in rows} >= {"future", "retain", "heldout", "probe"}  # step 0: nothing removed yet
    rep = CliRunner().invoke(main, ["report", str(run), "--no-plots"])
    assert rep.exit_code == 0 and "probe/copy (probe)" in rep.output, rep.output


def test_lm_eval_rows_with_stderr_and_in_the_report(evaluated):
    run, lm = evaluated
    assert lm.exit_code == 0, lm.output
    acc = [r for r in _rows(run) if r["metric"] == "lm_eval:ssu_cloze:acc"]
    assert len(acc) == 1
    r = acc[0]
    assert r["step"] == 0 and r["set"] == "lm-eval" and r["n"] == 200 and r["higher_is_better"] is True
    assert 0 <= r["value"] <= 1 and r["stderr"] > 0 and r["ci_low"] < r["value"] < r["ci_high"]
    rep = CliRunner().invoke(main, ["report", str(run), "--no-plots"])
    assert "lm_eval:ssu_cloze:acc" in rep.output, rep.output
    again = CliRunner().invoke(main, ["eval", str(run), "0", "--lm-eval", "ssu_cloze",
                                      "--lm-eval-include", str(LM_EVAL_TASKS)])
    assert "all results already computed" in again.output  # not run twice


def test_lm_eval_task_without_its_data_is_one_line(evaluated, tmp_path):
    run, _ = evaluated
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text((LM_EVAL_TASKS / "utils.py").read_text())  # the task without its data file
    (tasks / "lost.yaml").write_text((LM_EVAL_TASKS / "ssu_cloze.yaml").read_text().replace("task: ssu_cloze",
                                                                                           "task: ssu_lost"))
    res = CliRunner().invoke(main, ["eval", str(run), "0", "--lm-eval", "ssu_lost", "--lm-eval-include", str(tasks)])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "ssu_cloze.jsonl is missing" in errors[0], res.output


def test_listing_commands():
    sets = CliRunner().invoke(main, ["list", "eval-sets"])
    assert sets.exit_code == 0 and "removed-now" in sets.output
    mm = CliRunner().invoke(main, ["model-metrics"])  # the old command, an alias of `ssu list model-metrics`
    assert mm.exit_code == 0 and all(n in mm.output for n in ("perplexity", "mia", "lm_eval"))
    assert "tasks=[]" in mm.output  # lm_eval's parameters, from its Args


def test_lm_eval_rows_from_results():
    """Every numeric metric becomes a row; filters other than none are kept in the name; N/A stderr is None."""
    from ssu.eval.model_metrics.lm_eval import rows_from_results

    out = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                             "exact_match,strict": 0.25, "exact_match_stderr,strict": "N/A"}},
           "n-samples": {"t": {"original": 8, "effective": 4}},
           "higher_is_better": {"t": {"acc": True, "exact_match": True}}}
    rows = {r["metric"]: r for r in rows_from_results(out, 2)}
    assert set(rows) == {"lm_eval:t:acc", "lm_eval:t:exact_match:strict"}
    acc = rows["lm_eval:t:acc"]
    assert acc["step"] == 2 and acc["n"] == 4 and acc["stderr"] == 0.1
    assert acc["ci_low"] == pytest.approx(0.5 - 0.196) and acc["ci_high"] == pytest.approx(0.5 + 0.196)
    assert rows["lm_eval:t:exact_match:strict"]["stderr"] is None
