"""Steps that do just enough (α calibration) and protection that composes with any method.

On the synthetic world: the calibrated α is the bisection's answer, deterministic and
recorded in the manifest; Fisher damping moves retained text less than the same step
without it; the registry's errors are one line with a suggestion.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import retain_nll as _retain_nll

from ssu.config import CalibrateSettings
from ssu.errors import SSUError
from ssu.recipes.calibrate import calibrate_alpha
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.regularizers import REGULARIZERS
from ssu.vectors import load_vector

SETTINGS = CalibrateSettings(enabled=True, fraction=0.5, alpha_max=4.0, iterations=8)


def test_bisection_finds_the_smallest_alpha_that_reaches_the_target():
    record = calibrate_alpha(lambda a: max(0.0, 1.0 - a / 2), SETTINGS)  # reaches 0.5 at α = 1
    assert record["reached"] and record["target"] == 0.5 and record["score_at_0"] == 1.0
    assert 1.0 <= record["alpha"] <= 1.0 + 4.0 / 2**8
    assert record["trials"][:2] == [[0.0, 1.0], [4.0, 0.0]] and len(record["trials"]) <= 2 + 8 + 1
    assert calibrate_alpha(lambda a: max(0.0, 1.0 - a / 2), SETTINGS) == record  # deterministic


def test_unreachable_and_already_reached_targets_are_recorded():
    stuck = calibrate_alpha(lambda a: 0.9, SETTINGS)
    assert not stuck["reached"] and stuck["alpha"] == SETTINGS.alpha_max
    absolute = CalibrateSettings(enabled=True, rouge=0.95)
    done = calibrate_alpha(lambda a: 0.9, absolute)
    assert done["reached"] and done["alpha"] == 0.0 and done["trials"] == [[0.0, 0.9]]


def test_calibrated_step_records_its_alpha_and_is_deterministic(run_dir):
    calibrate = {"enabled": True, "fraction": 0.5, "windows": 4, "iterations": 5}
    runs = [run_dir(name=f"cal{i}", calibrate=calibrate) for i in range(2)]
    entries = [run_step(r, 1, progress=False) for r in runs]
    cal = entries[0]["calibration"]
    assert cal == entries[1]["calibration"] and entries[0]["alpha"] == entries[1]["alpha"] == cal["alpha"]
    # the book's 6 windows split 3 / 3: calibration scores its 3 (of at most 4), never an audit window
    split = entries[0]["split"][entries[0]["books"][0]]
    assert cal["windows"] == len(split["calibration"]) == 3 and len(split["audit"]) == 3
    assert cal["trials"][0][0] == 0.0 and cal["target"] == pytest.approx(
        0.5 * cal["score_at_0"], abs=1e-6)
    if cal["reached"]:
        chosen = [s for a, s in cal["trials"] if a == round(cal["alpha"], 6)]
        assert chosen and chosen[-1] <= cal["target"]
    manifest = json.loads((runs[0] / "manifest.json").read_text())["steps"]["1"]
    assert manifest["alpha"] == cal["alpha"] and manifest["calibration"] == cal


def test_fisher_damping_moves_retained_text_less(run_dir, synthetic_world):
    plain = run_dir(name="plain")
    damped = run_dir(name="fisher", regularizers=[{"name": "fisher", "args": {"lam": 100.0}}])
    entry = None
    for r in (plain, damped):
        entry = run_step(r, 1, progress=False)
    assert entry["regularizers"] == {"fisher": {"lambda": 100.0, "windows": 6}}
    base = _retain_nll(load_composed(RunDir(plain), upto=0), synthetic_world)
    hurt = {name: _retain_nll(load_composed(RunDir(r), upto=1), synthetic_world) - base
            for name, r in (("plain", plain), ("fisher", damped))}
    assert hurt["plain"] > 0 and hurt["fisher"] < hurt["plain"]
    v_plain, _ = load_vector(RunDir(plain).vector_path(1))
    v_damped, _ = load_vector(RunDir(damped).vector_path(1))
    assert 0 < v_damped.norm() < v_plain.norm()


def test_fisher_needs_a_full_fine_tune(run_dir):
    run = run_dir(regularizers=["fisher"], train={"finetune": "lora"})
    with pytest.raises(SSUError, match="fisher.*finetune: full"):
        run_step(run, 1, progress=False)


def test_unknown_regularizer_is_a_one_line_error_with_a_suggestion(run_dir):
    with pytest.raises(SSUError, match=r"unknown regularizer 'fishr'. Did you mean 'fisher'\?"):
        REGULARIZERS.get("fishr")
    with pytest.raises(SSUError, match="Did you mean 'fisher'"):
        run_dir(regularizers=["fishr"])
    with pytest.raises(SSUError, match=r"config key 'regularizers'"):
        run_dir(name="str", regularizers="fisher")
    with pytest.raises(SSUError, match="each may appear once"):
        run_dir(name="twice", regularizers=["kl", "kl"])


def test_the_stable_recipe_is_written_into_the_config(run_dir):
    cfg = json.loads((run_dir(method="ssu-stable", calibrate={"fraction": 0.3}) / "config.json").read_text())["config"]
    assert cfg["preset"] == "ssu-stable" and cfg["method"]["name"] == "ssu"
    assert cfg["regularizers"] == [{"name": "fisher", "args": {"lam": 30.0, "windows": 16}},
                                   {"name": "retain-mask", "args": {"fraction": 0.05, "windows": 16}}]
    assert cfg["calibrate"]["enabled"] is True and cfg["calibrate"]["alpha_max"] == 32.0
    assert cfg["calibrate"]["fraction"] == 0.3  # the user's key wins


def test_early_stop_ends_the_fine_tune_at_the_target_and_records_it(run_dir):
    calibrate = {"enabled": False, "early_stop": True, "fraction": 0.9, "windows": 4}
    runs = [run_dir(name=f"early{i}", calibrate=calibrate, train={"epochs": 4}) for i in range(2)]
    full = run_step(run_dir(name="full", train={"epochs": 4}), 1, progress=False)
    entries = [run_step(r, 1, progress=False) for r in runs]
    early = entries[0]["early_stop"]
    assert early == entries[1]["early_stop"]  # deterministic
    assert early["alpha_tested"] == 1.0 and early["target"] == pytest.approx(0.9 * early["score_at_0"], abs=1e-6)
    assert early["stopped_at_epoch"] is not None and early["epochs_run"] < 4
    assert early["checks"][-1][1] <= early["target"] < min(s for _, s in early["checks"][:-1] or [[0, 2.0]])
    # Stopping earlier means fewer optimizer steps, and so a smaller change than the full budget.
    assert entries[0]["hyperparameters"]["epochs"] == 4
    v_early, _ = load_vector(RunDir(runs[0]).vector_path(1))
    v_full, _ = load_vector(RunDir(runs[0].parent / "full").vector_path(1))
    assert 0 < v_early.norm() < v_full.norm() and full.get("early_stop") is None


def test_the_alpha_view_restores_the_trained_weights_bit_for_bit(synthetic_world):
    from ssu.engine.alpha import AlphaView
    from ssu.models.loading import load_model
    from ssu.vectors import TaskVector

    model = load_model(str(synthetic_world.memorized), "cpu", "float32")
    snapshot = {k: p.detach().clone() for k, p in model.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():  # a realistic step: std 1e-5 on weights of std ~0.02
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-5)
    trained = {k: p.detach().clone() for k, p in model.named_parameters()}
    vector = TaskVector.from_state_dicts(dict(model.named_parameters()), snapshot) * -1.0
    view = AlphaView(model, vector, snapshot, sign=-1, keep_trained=True)
    view.apply(3.0)
    assert not torch.equal(dict(model.named_parameters())["transformer.wte.weight"], trained["transformer.wte.weight"])
    view.restore()
    assert all(torch.equal(p, trained[k]) for k, p in model.named_parameters())
