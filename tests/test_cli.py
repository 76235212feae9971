"""The ``ssu`` command line, in-process through click's CliRunner, on the session's synthetic world."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from ssu.cli import main
from ssu.config import RunConfig
from ssu.methods import METHODS
from ssu.methods.ssu import SSUArgs
from ssu.recipes.compose import load_composed
from ssu.recipes.run_dir import RunDir, model_fingerprint
from ssu.vectors import load_vector

# Small full fine-tune so a CLI step takes about a second.
FAST = ["--set", "device=cpu", "--set", "train.finetune=full", "--set", "train.lr=1e-3",
        "--set", "train.epochs=2", "--set", "train.grad_accum=1"]


def ssu(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"ssu {' '.join(map(str, args))} failed:\n{result.output}\n{result.exception!r}"
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit status 1, exactly one line on stderr starting with ``error:``, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def state_dict(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def key_paths(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= key_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


# --- ssu init -----------------------------------------------------------------------


def test_init_records_every_hyperparameter_and_versions(synthetic_world, tmp_path):
    run = tmp_path / "run"
    result = ssu("init", run, "--model", synthetic_world.memorized, "--data", synthetic_world.prepared)
    assert "initialised" in result.stdout and "method ssu" in result.stdout
    record = config_of(run)
    cfg = record["config"]
    assert key_paths(cfg) >= key_paths(RunConfig().to_dict())  # every key, resolved
    assert cfg["method"] == {"name": "ssu", "args": dataclasses.asdict(SSUArgs())}  # the method's own args, filled
    assert record["format"] == 2
    assert cfg["model"] == str(synthetic_world.memorized.resolve())
    assert cfg["data"] == str(synthetic_world.prepared.resolve())
    # Unset lr/epochs come from the tiny model's card (LoRA by default).
    card = json.loads((synthetic_world.memorized / "ssu_model.json").read_text())
    assert cfg["train"]["lr"] == card["recommended_unlearn"]["lora"]["lr"]
    assert cfg["train"]["epochs"] == card["recommended_unlearn"]["lora"]["epochs"]
    env = record["environment"]
    for pkg in ("torch", "transformers", "peft", "safetensors"):
        assert env[pkg] == md.version(pkg)
    assert env["python"]
    assert record["base_model_sha256"] == model_fingerprint(str(synthetic_world.memorized))
    assert json.loads((run / "manifest.json").read_text()) == {"steps": {}}
    # The stored config reads back into the same object.
    assert RunDir(run).config.to_dict() == cfg

    again = ssu("init", run, "--model", synthetic_world.memorized, "--data", synthetic_world.prepared, ok=False)
    assert_one_line_error(again, "already a run directory")


def test_init_says_when_it_falls_back_to_the_7b_reference_rate(synthetic_world, tmp_path):
    # a model whose card gives no unlearning advice (a pretrained world made before its card did)
    model = tmp_path / "model"
    shutil.copytree(synthetic_world.memorized, model)
    card = json.loads((model / "ssu_model.json").read_text())
    del card["recommended_unlearn"]
    (model / "ssu_model.json").write_text(json.dumps(card))
    result = ssu("init", tmp_path / "run", "--model", model, "--data", synthetic_world.prepared)
    assert "no unlearning advice" in result.stderr and "lr 1e-05" in result.stderr
    assert config_of(tmp_path / "run")["config"]["train"]["lr"] == 1e-5
    quiet = ssu("init", tmp_path / "set", "--model", model, "--data", synthetic_world.prepared,
                "--set", "train.lr=1e-3", "--set", "train.epochs=3")
    assert "no unlearning advice" not in quiet.stderr


def test_init_set_and_config_file_are_honoured(synthetic_world, tmp_path):
    common = ["--model", synthetic_world.memorized, "--data", synthetic_world.prepared]
    ssu("init", tmp_path / "a", *common, "--set", "train.lr=0.002", "--set", "method.args.epsilon=0",
        "--set", "train.lora.r=8", "--set", "train.lora.target_modules=[c_attn]")
    cfg = config_of(tmp_path / "a")["config"]
    assert cfg["train"]["lr"] == 0.002 and cfg["method"]["args"]["epsilon"] == 0
    assert cfg["train"]["lora"]["r"] == 8 and cfg["train"]["lora"]["target_modules"] == ["c_attn"]
    assert cfg["method"]["args"]["k_random"] == 3  # untouched keys keep their defaults, written out

    # Exponent notation is a number, as in Python (PyYAML alone would read 2e-3 as text).
    ssu("init", tmp_path / "sci", *common, "--set", "train.lr=2e-3", "--set", "method.args.saliency_density=5E-2")
    cfg = config_of(tmp_path / "sci")["config"]
    assert cfg["train"]["lr"] == 0.002 and cfg["method"]["args"]["saliency_density"] == 0.05

    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("method: ssu-no-saliency\nseed: 11\ntrain:\n  finetune: full\n  lr: 0.0005\n"
                         "  batch_size: 4\neval:\n  max_windows: 3\n")
    ssu("init", tmp_path / "b", *common, "--config", yaml_file, "--set", "train.batch_size=1")
    cfg = config_of(tmp_path / "b")["config"]
    assert cfg["method"]["name"] == "ssu-no-saliency" and cfg["seed"] == 11 and cfg["eval"]["max_windows"] == 3
    assert cfg["train"]["finetune"] == "full" and cfg["train"]["lr"] == 0.0005
    assert cfg["train"]["batch_size"] == 1  # --set wins over the file
    # epochs unset: the card's advice for the *full* fine-tune the file chose
    card = json.loads((synthetic_world.memorized / "ssu_model.json").read_text())
    assert cfg["train"]["epochs"] == card["recommended_unlearn"]["full"]["epochs"]

    ssu("init", tmp_path / "c", *common, "--config", yaml_file, "--method", "tv")
    assert config_of(tmp_path / "c")["config"]["method"] == {"name": "tv", "args": {}}  # --method wins over the file

    # A preset expands into its blocks; --set keys apply over it.
    ssu("init", tmp_path / "p", *common, "--method", "ssu-stable", "--set", "regularizers.0.args.lam=12")
    cfg = config_of(tmp_path / "p")["config"]
    assert cfg["preset"] == "ssu-stable" and cfg["method"]["name"] == "ssu" and cfg["calibrate"]["enabled"]
    assert [r["name"] for r in cfg["regularizers"]] == ["fisher", "retain-mask"]
    assert cfg["regularizers"][0]["args"] == {"lam": 12.0, "windows": 16}


def test_init_rejects_unknown_method_and_keys(synthetic_world, tmp_path):
    common = ["--model", synthetic_world.memorized, "--data", synthetic_world.prepared]
    line = assert_one_line_error(ssu("init", tmp_path / "a", *common, "--method", "nonsense", ok=False),
                                 "unknown method 'nonsense'", "Available:")
    assert all(name in line for name in METHODS.names())
    assert not (tmp_path / "a").exists()

    assert_one_line_error(ssu("init", tmp_path / "b", *common, "--set", "train.bogus=1", ok=False),
                          "unknown config key 'train.bogus'")
    assert_one_line_error(ssu("init", tmp_path / "c", *common, "--set", "lerning_rate=1", ok=False),
                          "unknown config key 'lerning_rate'")
    assert_one_line_error(ssu("init", tmp_path / "h", *common, "--set", "method.args.epsilom=1", ok=False),
                          "method ssu: unknown config key 'epsilom'. Did you mean 'epsilon'?")
    assert_one_line_error(ssu("init", tmp_path / "i", *common, "--set", "regularizers=[fishr]", ok=False),
                          "unknown regularizer 'fishr'. Did you mean 'fisher'?")
    assert_one_line_error(ssu("init", tmp_path / "j", *common, "--set", "regularizers=[{name: kl, args: {lam: -1}}]",
                              ok=False), "kl: lam must be >= 0")
    assert_one_line_error(ssu("init", tmp_path / "k", *common, "--model", tmp_path / "nonexistent", ok=False),
                          "no such directory")
    # a hub id that resolves neither from the cache nor from the hub (offline here, absent online)
    assert_one_line_error(ssu("init", tmp_path / "l", *common, "--model", "ssu-tests-no-such-org/no-such-model",
                              ok=False), "not in the local cache")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  epochz: 3\n")
    assert_one_line_error(ssu("init", tmp_path / "d", *common, "--config", bad_yaml, ok=False),
                          "unknown config key 'train.epochz'")
    assert_one_line_error(ssu("init", tmp_path / "e", *common, "--set", "train.finetune=half", ok=False),
                          "train.finetune must be lora or full")
    assert_one_line_error(ssu("init", tmp_path / "t", *common, "--set", "train.epochs=two", ok=False),
                          "config key 'train.epochs'", "could not be converted to Integer")
    assert_one_line_error(ssu("init", tmp_path / "u", *common, "--set", "train.lr=fast", ok=False),
                          "config key 'train.lr'", "could not be converted to Float")
    assert_one_line_error(ssu("init", tmp_path / "f", "--data", synthetic_world.prepared, ok=False),
                          "--model is required")
    assert_one_line_error(ssu("init", tmp_path / "g", "--model", synthetic_world.memorized,
                              "--data", tmp_path / "nowhere", ok=False))
    assert not any((tmp_path / n).exists() for n in "bcdefghijkltu")


# --- ssu step / stack / compose ---------------------------------------------------------


@pytest.fixture(scope="module")
def stepped_run(synthetic_world, tmp_path_factory) -> Path:
    """A run initialised and stepped once through the CLI (evaluation enabled but skipped)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    ssu("init", run, "--model", synthetic_world.memorized, "--data", synthetic_world.prepared, *FAST)
    result = ssu("step", run, 1, "--no-eval")
    assert result.stdout.startswith("step 1: removed synth_01 in ")
    return run


def test_step_then_stack(stepped_run):
    assert RunDir(stepped_run).completed_steps() == [1]
    assert not (stepped_run / "results.jsonl").exists()  # --no-eval: nothing evaluated
    assert not (stepped_run / "step_1" / "generations.jsonl").exists()

    again = ssu("step", stepped_run, 1, "--no-eval")
    assert "already complete" in again.stdout

    out = ssu("stack", stepped_run).stdout.splitlines()
    assert out[0].split() == ["step", "alpha", "norm", "density", "bytes", "books"]
    assert len(out) == 2
    step, alpha, norm, density, nbytes, book = out[1].split()
    assert (step, alpha, book) == ("1", "1", "synth_01")
    assert float(norm) > 0 and 0 < float(density) < 1
    assert int(nbytes.replace(",", "")) == RunDir(stepped_run).vector_path(1).stat().st_size

    assert_one_line_error(ssu("step", stepped_run, 3, "--no-eval", ok=False), "missing: 2")


def test_compose_upto_and_alpha(stepped_run, synthetic_world, tmp_path):
    base = state_dict(synthetic_world.memorized)

    ssu("compose", stepped_run, "--out", tmp_path / "at0", "--upto", 0)
    assert_same_weights(state_dict(tmp_path / "at0"), base)  # the memorized model, bit for bit
    assert json.loads((tmp_path / "at0" / "ssu_compose.json").read_text())["steps"] == []
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "at0"))
    assert len(tok) == len(AutoTokenizer.from_pretrained(str(synthetic_world.memorized)))

    ssu("compose", stepped_run, "--out", tmp_path / "off", "--alpha", "1=0")
    assert_same_weights(state_dict(tmp_path / "off"), base)  # alpha 0 removes the step
    assert json.loads((tmp_path / "off" / "ssu_compose.json").read_text())["alphas"] == {"1": 0.0}

    ssu("compose", stepped_run, "--out", tmp_path / "all")
    composed = state_dict(tmp_path / "all")
    assert_same_weights(composed, load_composed(RunDir(stepped_run)).state_dict())
    assert any(not torch.equal(composed[k], base[k]) for k in base)

    assert_one_line_error(ssu("compose", stepped_run, "--out", tmp_path / "x", "--upto", 5, ok=False),
                          "--upto 5")
    assert_one_line_error(ssu("compose", stepped_run, "--out", tmp_path / "y", "--alpha", "2=1", ok=False),
                          "not complete")
    assert_one_line_error(ssu("compose", stepped_run, "--out", tmp_path / "z", "--alpha", "1:0", ok=False),
                          "--alpha expects STEP=VALUE")
    assert_one_line_error(ssu("compose", stepped_run, "--out", tmp_path / "all", ok=False), "already exists")
    assert not any((tmp_path / n).exists() for n in "xyz")


def test_audit_verify_and_probe_errors(stepped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stepped_run, run)
    out = ssu("audit", run).stdout
    assert out.startswith("step 1 [(no id)]") and (run / "audit.json").is_file() and (run / "audit.md").is_file()
    assert "verified" in ssu("audit", run, "--verify").stdout
    vector = RunDir(run).vector_path(1)
    data = bytearray(vector.read_bytes())
    data[-1] ^= 1
    vector.write_bytes(bytes(data))
    assert_one_line_error(ssu("audit", run, "--verify", ok=False), "step 1: the vector")
    assert_one_line_error(ssu("eval", run, 1, "--probe", "shiftd", ok=False), "unknown probe 'shiftd'",
                          "Did you mean 'shifted'?")
    assert_one_line_error(ssu("stack", run, "--reweight", "1:0", ok=False), "--reweight expects STEP=VALUE")
    assert_one_line_error(ssu("stack", run, "--reweight", "2=0", ok=False), "step 2 is not complete")


# --- data and model commands --------------------------------------------------------------


def test_prepare_missing_dir_is_one_line_error(tmp_path):
    result = ssu("prepare", tmp_path / "missing", tmp_path / "out", ok=False)
    assert_one_line_error(result, "missing")
    assert not (tmp_path / "out").exists()


def test_synth_prepare_tiny_model_round_trip(tmp_path):
    corpus, prepared, model = tmp_path / "corpus", tmp_path / "prepared", tmp_path / "model"
    out = ssu("synth", corpus, "--books", 2, "--words-per-book", 120, "--retain", 1, "--heldout", 1).stdout
    assert "wrote 2 books, 1 retain, 1 held-out" in out
    assert sorted(p.name for p in corpus.iterdir()) == ["heldout", "retain", "time_step_1", "time_step_2"]

    out = ssu("prepare", corpus, prepared, "--prompt-words", 10, "--continuation-words", 10).stdout
    assert "prepared 2 books over 2 steps (+1 retain, 1 held-out)" in out
    schedule = json.loads((prepared / "schedule.json").read_text())
    assert {str(k): v for k, v in schedule["steps"].items()} == {"1": ["synth_01"], "2": ["synth_02"]}
    windows = [json.loads(line) for line in (prepared / "windows.jsonl").read_text().splitlines()]
    assert {w["book"] for w in windows} == {"synth_01", "synth_02", "retain_01", "heldout_01"}
    assert all(len(w["prompt"].split()) == 10 and len(w["continuation"].split()) == 10 for w in windows)

    out = ssu("tiny-model", prepared, model, "--size", "nano", "--vocab-size", 400).stdout
    assert out.startswith("gpt2/nano: ")
    card = json.loads((model / "ssu_model.json").read_text())
    lm = AutoModelForCausalLM.from_pretrained(str(model))
    tok = AutoTokenizer.from_pretrained(str(model))
    assert card["parameters"] == sum(p.numel() for p in lm.parameters())
    assert card["vocab_size"] == len(tok) == lm.config.vocab_size <= 400
    text = windows[0]["prompt"]
    assert tok.decode(tok(text)["input_ids"]) == text

    assert_one_line_error(ssu("synth", corpus, ok=False), "exists")  # no silent overwrite
    assert_one_line_error(ssu("tiny-model", prepared, model, "--size", "nano", ok=False), "already exists")


def test_methods_lists_the_registry():
    lines = [line for line in ssu("list", "methods").stdout.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == METHODS.names()
    assert all(len(line.split()) > 1 for line in lines)  # each with its description
    assert ssu("methods").stdout == ssu("list", "methods").stdout  # the old command is an alias
    assert "ssu-stable" in ssu("list", "presets").stdout
    assert_one_line_error(ssu("list", "method", ok=False), "Did you mean 'methods'?")


def test_runconfig_defaults_are_the_reference_values():
    # The config ssu init writes must start from the public reference's SSU values.
    cfg = RunConfig()
    args = SSUArgs()
    assert cfg.method.name == "ssu" and (args.epsilon, args.k_random, args.saliency_k, cfg.alpha) == (0.5, 3, 1.0, 1.0)
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (2, 2)
    lora = dataclasses.asdict(cfg.train.lora)
    assert (lora["r"], lora["alpha"], lora["dropout"]) == (32, 32.0, 0.01)


def test_gpu_config_runs_unchanged_with_a_tiny_model(synthetic_world, tmp_path):
    """The real-model recipe (LoRA, bf16/auto, all-linear) names no model family: the same
    file drives a CPU run of the tiny model when only the model path and device are overridden."""
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "llama_lora.yaml"
    run = tmp_path / "gpu-recipe"
    runner = CliRunner()
    res = runner.invoke(main, ["init", str(run), "--config", str(config), "--model", str(synthetic_world.memorized),
                               "--data", str(synthetic_world.prepared), "--set", "device=cpu",
                               "--set", "dtype=float32", "--set", "train.lora.r=4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["step", str(run), "1", "--no-eval"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"]["1"]["finetune"] == "lora"
    vector, meta = load_vector(run / "step_1" / "vector.safetensors")
    assert meta["method"] == "ssu" and vector.norm() > 0
