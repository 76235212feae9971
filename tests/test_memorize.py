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
import ssu.recipes.memorize
from ssu.errors import SSUError
from ssu.recipes.memorize import memorize
from ssu.recipes.retrain import retrain


@pytest.fixture
def loop_calls(monkeypatch):
    calls = []
    real = ssu.engine.finetune.finetune

    def spy(model, method, *args, **kwargs):
        calls.append(method.name)
        return real(model, method, *args, **kwargs)

    monkeypatch.setattr(ssu.recipes.memorize, "finetune", spy)
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


def _generic_dir(path, files: int = 20, words: int = 80):
    """Generic text in one style: one synthetic book cut into ``files`` plain-text files."""
    from data_prep.synth import synthetic_book

    path.mkdir()
    text = synthetic_book(seed=7, role="generic", index=0, words=files * words).split()
    for i in range(files):
        (path / f"doc{i:02d}.txt").write_text(" ".join(text[i * words : (i + 1) * words]) + "\n")
    return path


def test_generic_text_is_mixed_in_and_keeps_heldout_perplexity_down(synthetic_world, tmp_path):
    from data_prep import load_generic
    from ssu.models.loading import load_model, load_tokenizer
    from ssu.recipes.memorize import heldout_perplexity

    generic = _generic_dir(tmp_path / "generic")
    cfg = dataclasses.replace(MEMORIZE, epochs=10, eval_every=10)
    mixed = memorize(str(synthetic_world.tiny), synthetic_world.prepared, tmp_path / "mixed",
                     dataclasses.replace(cfg, generic_dir=str(generic), heldout_windows=8), progress=False)
    plain = memorize(str(synthetic_world.tiny), synthetic_world.prepared, tmp_path / "plain", cfg, progress=False)
    # The held-out file (doc19) is never trained: 2 windows of 20 + 20 words; 19 files trained.
    assert mixed["generic"]["files"] == 20 and mixed["generic"]["heldout"] == 2
    assert mixed["generic"]["pool"] == 19 * 2
    assert set(mixed["heldout_perplexity"]) == {"heldout_books", "generic"}
    assert set(plain["heldout_perplexity"]) == {"heldout_books"}
    held = load_generic(generic, 20, 20, pool=4096, heldout=8, seed=0).heldout
    assert {w["book"] for w in held} == {"generic:doc19"}
    ppl = {name: heldout_perplexity(load_model(str(tmp_path / name), "cpu", "float32"),
                                    load_tokenizer(str(tmp_path / name)), held, 512)
           for name in ("mixed", "plain")}
    assert mixed["heldout_perplexity"]["generic"]["after"] == pytest.approx(ppl["mixed"], rel=1e-5)
    # Mixing the style in keeps unseen text of that style predictable; books alone do not.
    assert ppl["mixed"] < 0.5 * ppl["plain"]
    assert mixed["heldout_perplexity"]["generic"]["after"] < mixed["heldout_perplexity"]["generic"]["before"]


def test_a_missing_or_empty_generic_dir_is_a_one_line_error(synthetic_world, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = dataclasses.replace(MEMORIZE, epochs=1, generic_dir=str(tmp_path / "empty"))
    with pytest.raises(SSUError, match="no .txt files"):
        memorize(str(synthetic_world.tiny), synthetic_world.prepared, tmp_path / "m", cfg, progress=False)
    assert not (tmp_path / "m").exists()
