"""The goal table of experiments/deep (``table.py``) on constructed results.

- a removed book's excess is measured against the retrain reference of its step where there is
  one, else against the memorized model's held-out score;
- the retrain references make a row of their own: their scores, the ratios of the books they
  kept to the memorized model's, no excess or gap (they are the level);
- utility is also read against the reference of the same step (perplexity at every step, the
  cloze task at the last), beside the memorized model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "deep"))
table = pytest.importorskip("table")


def _write(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "set": st, "book": b, "metric": m, "value": v}) + "\n"
                            for s, st, b, m, v in rows))


MEMORIZED = [(0, "removed-now", "a", "rougeL_f", 0.9), (0, "future", "b", "rougeL_f", 0.8),
             (0, "retain", "r", "rougeL_f", 1.0), (0, "heldout", "h", "rougeL_f", 0.12),
             (0, "heldout", "h", "perplexity", 10.0)]


def test_excess_is_over_the_retrain_reference_and_the_reference_has_its_own_row(tmp_path):
    seed = tmp_path / "seed0"
    _write(seed / "v" / "results.jsonl", MEMORIZED + [
        (1, "removed-now", "a", "rougeL_f", 0.30), (1, "future", "b", "rougeL_f", 0.60),
        (1, "retain", "r", "rougeL_f", 0.95), (1, "heldout", "h", "perplexity", 12.0)])
    (seed / "v" / "manifest.json").write_text(json.dumps(
        {"steps": {"1": {"alpha": 1.0, "timings": {"total_seconds": 3.0}}}}))
    before = table.collect(tmp_path)["v"][0]
    assert before["greedy_excess"] == pytest.approx(0.30 - 0.12)  # no reference: held-out text
    assert table.REFERENCE not in table.collect(tmp_path)

    _write(seed / "retrain" / "step_1" / "eval" / "results.jsonl", [
        (1, "removed-now", "a", "rougeL_f", 0.20), (1, "future", "b", "rougeL_f", 0.76),
        (1, "retain", "r", "rougeL_f", 1.0), (1, "heldout", "h", "perplexity", 11.0)])
    got = table.collect(tmp_path)
    assert got["v"][0]["greedy_excess"] == pytest.approx(0.30 - 0.20)
    ref = got[table.REFERENCE][0]
    assert ref["greedy"] == [pytest.approx(0.20)]
    assert ref["future_mean"] == pytest.approx(0.76 / 0.8) and ref["retained"] == pytest.approx(1.0)
    assert ref["ppl_ratio"] == pytest.approx(1.1)
    assert ref["greedy_excess"] is None and ref["relearn_gap"] is None
    text = table.render(got, ["v"])
    assert text.splitlines()[-1].startswith(f"| {table.REFERENCE} | 0 | 0.20 | — |")


def _acc(step: int, value: float, stderr: float) -> str:
    return json.dumps({"step": step, "set": "lm-eval", "book": "*", "metric": table.ACC, "value": value,
                       "stderr": stderr}) + "\n"


def test_utility_is_also_read_against_the_reference_of_the_same_step(tmp_path):
    seed = tmp_path / "seed0"
    _write(seed / "v" / "results.jsonl", MEMORIZED + [
        (1, "removed-now", "a", "rougeL_f", 0.30), (1, "heldout", "h", "perplexity", 12.0),
        (2, "removed-now", "a", "rougeL_f", 0.20), (2, "heldout", "h", "perplexity", 10.5)])
    with (seed / "v" / "results.jsonl").open("a") as f:
        f.write(_acc(0, 0.50, 0.04) + _acc(2, 0.52, 0.04))
    (seed / "v" / "manifest.json").write_text(json.dumps(
        {"steps": {str(t): {"alpha": 1.0, "timings": {"total_seconds": 3.0}} for t in (1, 2)}}))
    assert table.collect(tmp_path)["v"][0]["ppl_vs_ref"] is None  # no reference, no reading
    for t, ppl in ((1, 8.0), (2, 5.0)):
        _write(seed / "retrain" / f"step_{t}" / "eval" / "results.jsonl", [(t, "heldout", "h", "perplexity", ppl)])
    with (seed / "retrain" / "step_2" / "eval" / "results.jsonl").open("a") as f:
        f.write(_acc(2, 0.60, 0.05))
    got = table.collect(tmp_path)["v"][0]
    assert got["ppl_ratio"] == pytest.approx(1.2)  # step 1 against the memorized model's 10
    assert got["ppl_vs_ref"] == pytest.approx(10.5 / 5.0)  # step 2 against its own reference, the larger
    assert got["lm_eval_se"] == pytest.approx(0.5) and got["lm_eval_se_ref"] == pytest.approx(1.6)
    row = table.utility(table.collect(tmp_path), ["v"]).splitlines()[-1]
    assert row == "| v | 0 | 1.20 ✗ | 2.10 ✗ | 0.50 ✓ | 1.60 ✗ |"
