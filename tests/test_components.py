"""Components own their config: a new one is one file, and old run directories still step.

- A regularizer defined right here, with its own parameter dataclass, registers itself,
  is listed by ``ssu list regularizers``, takes ``--set`` overrides of its args and runs a
  step -- with no edit to any other file.
- A run directory made by release 0.1's ``ssu init`` (``tests/fixtures/legacy_v0_1``:
  flat keys such as ``fisher_lambda`` and ``method: ssu-stable``) loads with a one-line
  notice and steps, to the same vector as a run initialised today with the same settings.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ssu.cli import main
from ssu.errors import SSUError
from ssu.recipes.init import init_run
from ssu.recipes.run_dir import RunDir, model_fingerprint
from ssu.recipes.step import run_step
from ssu.regularizers import REGULARIZERS, Regularizer
from ssu.vectors import TaskVector, load_vector

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_v0_1"


@dataclass
class ScaleArgs:
    factor: float = 1.0  # what the step's vector is multiplied by

    def __post_init__(self) -> None:
        if self.factor < 0:
            raise SSUError("test-scale: factor must be >= 0")


class ScaleVector(Regularizer):
    """Multiply the step's vector by a constant (a regularizer as small as one can be)."""

    Args = ScaleArgs

    def vector(self, vector, model):
        return TaskVector({k: vector[k] * self.args.factor for k in vector.keys()})

    def record(self) -> dict:
        return {"factor": self.args.factor}


@pytest.fixture
def scale_registered():
    REGULARIZERS.register("test-scale", description="scale the step's vector by a factor (a test's own)")(ScaleVector)
    yield
    REGULARIZERS.remove("test-scale")


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_a_regularizer_defined_in_a_test_file_registers_lists_and_runs(scale_registered, synthetic_world, tmp_path):
    listed = _cli("list", "regularizers").stdout
    assert "test-scale" in listed and "factor=1.0" in listed
    common = ["--model", synthetic_world.memorized, "--data", synthetic_world.prepared, "--set", "device=cpu",
              "--set", "train.finetune=full", "--set", "train.epochs=1"]
    _cli("init", tmp_path / "plain", *common)
    _cli("init", tmp_path / "scaled", *common, "--set", "regularizers=[test-scale]",
         "--set", "regularizers.0.args.factor=0.5")
    cfg = json.loads((tmp_path / "scaled" / "config.json").read_text())["config"]
    assert cfg["regularizers"] == [{"name": "test-scale", "args": {"factor": 0.5}}]
    for run in ("plain", "scaled"):
        _cli("step", tmp_path / run, 1, "--no-eval")
    plain, _ = load_vector(RunDir(tmp_path / "plain").vector_path(1))
    scaled, _ = load_vector(RunDir(tmp_path / "scaled").vector_path(1))
    assert all(torch.equal(scaled[k], plain[k] * 0.5) for k in plain.keys())  # halving a float is exact
    assert RunDir(tmp_path / "scaled").step_record(1)["regularizers"] == {"test-scale": {"factor": 0.5}}
    bad = CliRunner().invoke(main, ["init", str(tmp_path / "bad"), *map(str, common),
                                    "--set", "regularizers=[{name: test-scale, args: {factor: -1}}]"])
    assert bad.exit_code == 1 and "test-scale: factor must be >= 0" in bad.output


def _legacy_copy(name: str, world, tmp_path: Path) -> Path:
    run = tmp_path / f"legacy-{name}"
    shutil.copytree(LEGACY / name, run)
    text = (run / "config.json").read_text()
    text = text.replace("<MODEL>", str(world.memorized.resolve())).replace("<DATA>", str(world.prepared.resolve()))
    text = text.replace("<BASE_MODEL_SHA256>", model_fingerprint(str(world.memorized)))
    (run / "config.json").write_text(text)
    return run


@pytest.mark.parametrize("name, today", [
    ("ssu-stable", {"method": "ssu-stable", "eval": {"max_windows": 2}}),
    ("gd-guard", {"method": {"name": "gd", "args": {"retain_weight": 0.5}}, "train": {"finetune": "full"},
                  "regularizers": [{"name": "guard", "args": {"weight": 0.5}}, {"name": "kl", "args": {"lam": 2}}],
                  "eval": {"model_metrics": ["perplexity"]}}),
])
def test_a_run_made_by_release_0_1_loads_and_steps(name, today, synthetic_world, tmp_path):
    legacy = _legacy_copy(name, synthetic_world, tmp_path)
    result = CliRunner().invoke(main, ["step", str(legacy), "1", "--no-eval"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "made by ssu 0.1" in notes[0]
    assert "format" not in json.loads((legacy / "config.json").read_text())  # the directory is left as it was
    fresh = tmp_path / "today"
    init_run(fresh, {**today, "model": str(synthetic_world.memorized), "data": str(synthetic_world.prepared),
                     "device": "cpu"})
    assert RunDir(legacy).config.to_dict() == {**RunDir(fresh).config.to_dict()}
    run_step(fresh, 1, progress=False)
    a, _ = load_vector(RunDir(legacy).vector_path(1))
    b, _ = load_vector(RunDir(fresh).vector_path(1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a.keys())
