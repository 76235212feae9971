"""``ssu compare`` and ``ssu retrain`` end to end on the session's synthetic world.

Two methods (SSU and gradient ascent) over two steps, full fine-tune of the nano
model, evaluation on two windows per book; then the same comparison re-run (a
no-op), extended with the retrain reference, and fed bad configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ssu.cli import main
from ssu.compare.runner import ensure_run, load_compare_config, run_comparison
from ssu.errors import SSUError
from ssu.methods import METHODS
from ssu.recipes.memorize import load_record

PNG = b"\x89PNG\r\n\x1a\n"


def compare_config(world, out: Path, **over) -> dict:
    return {
        "model": str(world.memorized), "data": str(world.prepared), "out": str(out), "steps": 2,
        "methods": ["ssu", "ga"],
        "common": {"device": "cpu", "seed": 3,
                   "train": {"finetune": "full", "lr": 1e-3, "epochs": 3, "batch_size": 2, "grad_accum": 1},
                   "eval": {"max_windows": 2, "metrics": ["rougeL_f"]}},
        "per_method": {"ga": {"train": {"lr": 2e-4}}},
        **over,
    }


def snapshot(out: Path) -> dict[str, bytes]:
    """Every run artifact except the summary, which is redrawn on each run."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent != out}


@pytest.fixture(scope="module")
def compared(synthetic_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    cc = load_compare_config(compare_config(synthetic_world, out))
    return cc, run_comparison(cc, progress=False)


def test_comparison_writes_table_json_and_plots(compared):
    cc, summary = compared
    md = (cc.out / "comparison.md").read_text()
    for t in (1, 2):
        section = md.split(f"## After step {t}")[1].split("## ")[0]
        assert f"synth_0{t}" in section
        assert [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:] == \
            ["ssu", "ga"]
    data = json.loads((cc.out / "comparison.json").read_text())
    assert data["rows"] == summary["rows"]
    rows = {(r["step"], r["method"]): r for r in data["rows"]}
    assert sorted(rows) == [(1, "ga"), (1, "ssu"), (2, "ga"), (2, "ssu")]
    for (t, _), r in rows.items():
        assert 0 <= r["forget"] <= 1 and 0 <= r["retained"] <= 1 and r["heldout_ppl"] > 1
        assert (r["earlier"] is None) == (t == 1)  # nothing was removed before step 1
        assert r["seconds"] > 0 and r["gap_to_retrain"] is None
    assert data["base"]["memorized"] >= 0.9  # the world is memorized to ROUGE-L >= 0.9
    # SSU at the tiny models' recommended rate and epochs (1e-3, 3) removes much of the book.
    assert rows[(1, "ssu")]["forget"] < data["base"]["memorized"] - 0.2
    for name in ("tradeoff.png", "forget_curve.png"):
        assert (cc.out / name).read_bytes().startswith(PNG)
    assert {p.name for p in cc.out.iterdir()} >= {"ssu", "ga"}


def test_rerun_is_a_no_op_for_completed_steps(compared, monkeypatch):
    cc, summary = compared
    before = snapshot(cc.out)

    def boom(*a, **k):
        raise AssertionError("a completed step was trained or generated again")

    monkeypatch.setattr("ssu.recipes.step.finetune", boom)
    monkeypatch.setattr("ssu.recipes.evaluate.generate_continuations", boom)
    path = cc.out.parent / "compare.yaml"
    path.write_text(yaml.safe_dump({**compare_config_from(cc), "out": str(cc.out)}))
    result = CliRunner().invoke(main, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert "ssu: step 2 already complete" in result.output and "| ga |" in result.output
    assert snapshot(cc.out) == before
    assert json.loads((cc.out / "comparison.json").read_text())["rows"] == summary["rows"]


def compare_config_from(cc) -> dict:
    return {"model": cc.model, "data": cc.data, "steps": cc.steps, "methods": cc.methods,
            "common": cc.common, "per_method": cc.per_method}


def test_retrain_reference_adds_rows_and_gaps(compared, synthetic_world):
    cc, _ = compared
    # Same runs, now reporting step 2 only, with the reference model retrained without books 1-2.
    cc2 = load_compare_config({**compare_config_from(cc), "out": str(cc.out), "steps": [2], "retrain": True})
    summary = run_comparison(cc2, progress=False)
    rows = {(r["step"], r["method"]): r for r in summary["rows"]}
    assert sorted(rows) == [(2, "ga"), (2, "retrain"), (2, "ssu")]
    ref = rows[(2, "retrain")]
    for m in ("ssu", "ga"):
        assert rows[(2, m)]["gap_to_retrain"] == pytest.approx(rows[(2, m)]["forget"] - ref["forget"])
        # PrivLeak in MUSE's orientation (AUC = 1 - ours) against the reference's AUC
        a, a_ref = rows[(2, m)]["mia_auc"], ref["mia_auc"]
        assert rows[(2, m)]["priv_leak"] == pytest.approx(((1 - a) - (1 - a_ref)) / (1 - a_ref) * 100)
    assert ref["priv_leak"] == 0.0
    record = load_record(cc.out / "retrain" / "step_2" / "model")
    assert record["excluded_books"] == ["synth_01", "synth_02"]
    assert record["source_model"] == synthetic_world.memorize_record["source_model"]
    assert record["config"] == synthetic_world.memorize_record["config"]
    assert record["n_windows"] == synthetic_world.memorize_record["n_windows"] - 12  # 6 windows per book
    # Never trained on books 1-2, the reference does not reproduce them; it still has the retain book.
    assert ref["forget"] < 0.5 and ref["earlier"] < 0.5 and ref["retained"] >= 0.9
    md = (cc.out / "comparison.md").read_text()
    assert "| retrain |" in md and "PrivLeak %" in md


def test_changed_config_for_an_existing_run_is_refused(compared):
    cc, _ = compared
    changed = load_compare_config({**compare_config_from(cc), "out": str(cc.out),
                                   "per_method": {"ga": {"train": {"lr": 5e-4}}}})
    with pytest.raises(SSUError, match=r"different config \(train.lr"):
        ensure_run(changed, "ga")


@pytest.mark.parametrize("over, message", [
    ({"methods": ["ssu", "nonsense"]}, "unknown method 'nonsense'"),
    ({"methods": ["ssu", "ssu"]}, "distinct"),
    ({"steps": 0}, "steps must be"),
    ({"colour": "blue"}, "compare config: unknown config key .colour."),
    ({"per_method": {"npo": {}}}, "not in methods"),
    ({"common": {"train": {"batch_size": 0}}}, "must be >= 1"),
    ({"common": {"eval": {"metrics": ["rouge1_f"]}}}, "needs evaluation with rougeL_f"),
])
def test_bad_compare_configs_are_one_line_errors(synthetic_world, tmp_path, over, message):
    with pytest.raises(SSUError, match=message) as err:
        load_compare_config(compare_config(synthetic_world, tmp_path / "out", **over))
    assert "\n" not in str(err.value)
    if "nonsense" in str(over):
        assert all(n in str(err.value) for n in METHODS.names())


def test_example_config_is_valid():
    cc = load_compare_config(Path(__file__).parents[1] / "experiments" / "compare_synthetic.yaml")
    assert cc.retrain and cc.steps == [1, 2, 3] and "npo" in cc.methods


def test_missing_keys_via_the_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [ssu]\nsteps: 1\n")
    result = CliRunner().invoke(main, ["compare", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == "error: compare config needs model, data, out"
