"""``ssu memorize`` and ``ssu retrain`` train through the one loop of ``ssu step``.

Accumulation, clipping, the finite checks and distribution exist once, in
``ssu/engine/finetune.py``; memorize supplies only its objective (the whole window),
its warm-up schedule and its early stop.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import MEMORIZE

import ssu.engine.finetune
import ssu.models.memorize
from ssu.compare.retrain import retrain
from ssu.errors import SSUError
from ssu.models.memorize import memorize


@pytest.fixture
def loop_calls(monkeypatch):
    calls = []
    real = ssu.engine.finetune.finetune

    def spy(model, method, *args, **kwargs):
        calls.append(method.name)
        return real(model, method, *args, **kwargs)

    monkeypatch.setattr(ssu.models.memorize, "finetune", spy)
    return calls


def test_memorize_and_retrain_run_the_step_loop(synthetic_world, tmp_path, loop_calls):
    cfg = dataclasses.replace(MEMORIZE, epochs=2, eval_every=1)
    record = memorize(str(synthetic_world.tiny), synthetic_world.prepared, tmp_path / "m", cfg, progress=False)
    assert loop_calls == ["memorize"] and record["epochs_run"] == 2 and len(record["history"]) == 2
    retrain(synthetic_world.memorized, synthetic_world.prepared, tmp_path / "r", 1,
            {"eval": {"enabled": True, "max_windows": 1}, "device": "cpu"}, progress=False)
    assert loop_calls == ["memorize", "memorize"]


def test_memorize_stops_early_once_every_book_is_reproduced(synthetic_world):
    history = synthetic_world.memorize_record["history"]
    assert synthetic_world.memorize_record["target_reached"]
    assert synthetic_world.memorize_record["epochs_run"] < MEMORIZE.epochs == 60
    assert min(history[-1]["rougeL"].values()) >= MEMORIZE.target_rouge > min(history[0]["rougeL"].values())


def test_a_diverging_memorization_is_the_loops_one_line_error(synthetic_world, tmp_path):
    cfg = dataclasses.replace(MEMORIZE, epochs=3, lr=1e12)
    with pytest.raises(SSUError, match=r"not finite|loss is .*lower --lr"):
        memorize(str(synthetic_world.tiny), synthetic_world.prepared, tmp_path / "m", cfg, progress=False)
    assert not (tmp_path / "m").exists()
