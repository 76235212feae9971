"""The analysis notebook runs top to bottom on a small synthetic run (so it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ssu.recipes.evaluate import evaluate_step
from ssu.recipes.init import init_run
from ssu.recipes.report import format_matrix, write_plots
from ssu.recipes.step import run_step

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


@pytest.fixture(scope="module")
def evaluated_run(synthetic_world, tmp_path_factory):
    run = tmp_path_factory.mktemp("nb") / "run"
    init_run(run, {"model": str(synthetic_world.memorized), "data": str(synthetic_world.prepared),
                   "device": "cpu", "train": {"finetune": "full", "lr": 1e-3, "epochs": 2},
                   "eval": {"metrics": ["rougeL_f", "verbatim_8gram"],
                            "probes": [{"name": "shifted", "args": {"variants": ["tail", "later"]}}]}})
    for t in (0, 1):
        if t:
            run_step(run, t, progress=False)
        evaluate_step(run, t, progress=False)
    return run


def test_report_matrix_and_plots(evaluated_run):
    text = format_matrix(evaluated_run)
    assert "step 0" in text and "step 1" in text and "perplexity (heldout)" in text
    assert "greedy/worst (worst: per window the max over greedy, shifted)" in text
    assert all(p.stat().st_size > 1000 for p in write_plots(evaluated_run))


def test_notebook_executes(evaluated_run, monkeypatch):
    monkeypatch.setenv("SSU_RUN_DIR", str(evaluated_run))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (evaluated_run / "notebook_tradeoff.png").is_file()
    assert (evaluated_run / "notebook_removal_depth.png").is_file()
