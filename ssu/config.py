"""The resolved configuration of a run.

``ssu init`` merges defaults, an optional YAML file and ``--set key=value``
overrides into one :class:`RunConfig`, stores it as ``RUN_DIR/config.json`` along
with the seed and library versions, and every later command reads it back, so a
run can be reproduced from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ssu.errors import SSUError

ALL_LINEAR = "all-linear"


@dataclass
class LoraSettings:
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.01
    target_modules: Any = ALL_LINEAR  # "all-linear" or a list of module names


@dataclass
class TrainSettings:
    lr: float | None = None  # None: the model card's recommendation, else 1e-5 (reference)
    epochs: int | None = None  # None: the model card's recommendation, else 1 (reference)
    batch_size: int = 2
    grad_accum: int = 2
    max_length: int = 512
    max_grad_norm: float = 1.0
    finetune: str = "lora"  # "lora" | "full"
    # The next three are device-aware: `ssu init` writes GPU values into the run's config
    # unless they are given (ssu/step.py DEVICE_DEFAULTS); these are the CPU ones.
    share_prompts: bool = True  # forward each prompt once for its 1 + K rows (ssu/engine/prefix.py)
    # Windows per forward/backward inside a micro-batch. Activation memory scales with it;
    # the gradient does not change (each chunk is normalized by the micro-batch's totals).
    windows_per_backward: int | None = 1
    # Or a budget: as many windows per forward/backward as fit this many padded tokens
    # (at least one window); used when set, instead of windows_per_backward.
    tokens_per_backward: int | None = None
    gradient_checkpointing: bool = False  # recompute activations in the backward (packed rows only)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class EvalSettings:
    enabled: bool = True
    max_windows: int | None = None  # per book, sampled with the run seed
    batch_size: int = 32  # prompts per generation batch; windows per log-probability forward
    # Or a budget for generation: at most this many (padded prompt + new) tokens per batch.
    tokens_per_batch: int | None = None
    metrics: list[str] = field(default_factory=lambda: [  # text metrics (ssu.metrics)
        "rouge1_f", "rougeL_f", "rougeL_recall", "lcs_words", "acs_words", "verbatim_8gram",
    ])
    # Evaluation sets (ssu/eval/sets/) and user sets: name -> JSON lines path or {path, goal}.
    sets: list[str] = field(default_factory=lambda: [
        "removed-now", "removed-earlier", "retain", "future", "heldout"])
    extra_sets: dict[str, Any] = field(default_factory=dict)
    model_metrics: list[str] = field(default_factory=lambda: ["perplexity", "mia"])  # ssu/eval/model_metrics/
    lm_eval_tasks: list[str] = field(default_factory=list)  # run at every evaluation when non-empty
    lm_eval_include: str | None = None  # a directory of extra lm-eval task YAML files
    lm_eval_limit: int | None = None  # documents per task (None: all)


@dataclass
class CalibrateSettings:
    """α per step by bisection on the removed book's ROUGE-L (ssu/engine/calibrate.py)."""

    enabled: bool = False
    fraction: float = 0.5  # target: ROUGE-L <= fraction x the book's ROUGE-L at θ_{t-1}
    rouge: float | None = None  # or an absolute ROUGE-L target (used when set)
    alpha_max: float = 4.0
    iterations: int = 8  # bisection steps: α known to alpha_max / 2**iterations
    windows: int = 16  # per step, sampled from the removed books' windows
    # End the fine-tune at the first epoch whose vector reaches the target (at alpha_max
    # when enabled, else at the run's alpha); one process only.
    early_stop: bool = False


@dataclass
class RunConfig:
    model: str = ""
    data: str = ""
    method: str = "ssu"
    # Method hyperparameters (the method reads the ones it needs; see ssu/methods).
    epsilon: float = 0.5  # weight of the random-label loss
    k_random: int = 3  # random continuations per prompt
    saliency: str = "step"  # "step" | "fixed" | "none"
    saliency_k: float = 1.0  # gamma = mean + k * std of |grad|
    saliency_density: float | None = None  # alternative: keep the top fraction
    alpha: float = 1.0  # theta_t = theta_{t-1} - alpha * tau_t
    npo_beta: float = 0.4
    retain_weight: float = 1.0
    seed: int = 0
    deterministic: bool = True  # deterministic kernels: reruns give identical bytes (ssu/engine/seeding.py)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    # Protection composed with any method (ssu/engine/regularizers/), and their settings.
    regularizers: list[str] = field(default_factory=list)
    fisher_lambda: float = 10.0
    fisher_windows: int = 16
    kl_lambda: float = 1.0
    kl_windows: int | None = None  # retain windows per chunk; None: as many as its forget windows
    retain_mask_fraction: float = 0.05
    retain_mask_windows: int = 16
    guard_weight: float = 0.25
    guard_windows: int | None = None  # earlier-removed windows per chunk; None: as its forget windows
    calibrate: CalibrateSettings = field(default_factory=CalibrateSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "")


def _build(cls, data: dict[str, Any], prefix: str):
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise SSUError(f"unknown config key {prefix + key!r}; known: {', '.join(sorted(known))}")
        default = known[key].default_factory() if callable(known[key].default_factory) else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise SSUError(f"config key {prefix + key!r} must be a mapping")
            value = _build(type(default), value, prefix + key + ".")
        else:
            value = _check_scalar(prefix + key, known[key].type, value)
        kwargs[key] = value
    return cls(**kwargs)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
_KIND = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _check_scalar(name: str, annotation: Any, value: Any) -> Any:
    """Check a scalar field's type; a number written as ``1e-4`` becomes a float.

    PyYAML (YAML 1.1) reads ``1e-4`` -- no dot -- as a string, so ``--set train.lr=1e-4``
    would otherwise reach validation as text and fail with a TypeError.
    """
    kind = str(annotation).replace(" ", "").removesuffix("|None")
    if kind not in _SCALARS or (value is None and str(annotation).endswith("None")):
        return value
    if kind == "float" and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if not isinstance(value, _SCALARS[kind]) or (kind != "bool" and isinstance(value, bool)):
        raise SSUError(f"config key {name!r} must be {_KIND[kind]}, got {value!r}")
    return value


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 and Python do."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: safe


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "epsilon=0"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SSUError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml_load(raw)
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = _yaml_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SSUError(f"cannot read config {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise SSUError(f"config {path} must be a mapping of keys to values")
    return data


def resolve(overrides: dict[str, Any]) -> RunConfig:
    """Defaults <- overrides, validated."""
    cfg = RunConfig.from_dict(merge(RunConfig().to_dict(), overrides))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    from ssu.engine.regularizers import get_regularizer
    from ssu.methods import get_method

    get_method(cfg.method)  # raises with the list of names
    if not isinstance(cfg.regularizers, list):
        raise SSUError(f"regularizers must be a list of names, e.g. --set regularizers=[fisher]; "
                       f"got {cfg.regularizers!r}")
    for name in cfg.regularizers:
        get_regularizer(name)
    _validate_eval(cfg)
    checks = [
        (cfg.epsilon >= 0, "epsilon must be >= 0"),
        (cfg.k_random >= 1, "k_random must be >= 1"),
        (cfg.saliency in ("step", "fixed", "none"), "saliency must be step, fixed or none"),
        (cfg.saliency_density is None or 0 < cfg.saliency_density <= 1, "saliency_density must be in (0, 1]"),
        (cfg.train.finetune in ("lora", "full"), "train.finetune must be lora or full"),
        ((cfg.train.epochs is None or cfg.train.epochs >= 1) and cfg.train.batch_size >= 1
         and cfg.train.grad_accum >= 1 and all(v is None or v >= 1 for v in (cfg.train.windows_per_backward,
                                                                              cfg.train.tokens_per_backward)),
         "train.epochs, train.batch_size, train.grad_accum, train.windows_per_backward and "
         "train.tokens_per_backward must be >= 1"),
        (cfg.fisher_lambda >= 0 and cfg.fisher_windows >= 1, "fisher_lambda must be >= 0, fisher_windows >= 1"),
        (cfg.kl_lambda >= 0 and (cfg.kl_windows is None or cfg.kl_windows >= 1),
         "kl_lambda must be >= 0, kl_windows >= 1"),
        (0 < cfg.retain_mask_fraction < 1 and cfg.retain_mask_windows >= 1,
         "retain_mask_fraction must be in (0, 1), retain_mask_windows >= 1"),
        (cfg.guard_weight >= 0 and (cfg.guard_windows is None or cfg.guard_windows >= 1),
         "guard_weight must be >= 0, guard_windows >= 1"),
        (cfg.calibrate.alpha_max > 0 and cfg.calibrate.iterations >= 0 and cfg.calibrate.windows >= 1
         and 0 < cfg.calibrate.fraction <= 1, "calibrate: alpha_max > 0, iterations >= 0, windows >= 1, "
         "fraction in (0, 1]"),
        (cfg.train.lr is None or cfg.train.lr > 0, "train.lr must be > 0"),
        (cfg.train.lora.r >= 1, "train.lora.r must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SSUError(msg)


def _validate_eval(cfg: RunConfig) -> None:
    """Every name the eval settings give must be registered (one-line did-you-mean errors)."""
    from ssu.eval.model_metrics import get_model_metric
    from ssu.eval.sets import check_config
    from ssu.metrics import get_metric

    ev = cfg.eval
    for key in ("metrics", "model_metrics", "lm_eval_tasks"):
        value = getattr(ev, key)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise SSUError(f"eval.{key} must be a list of names, e.g. --set eval.{key}=[a,b]; got {value!r}")
    for name in ev.metrics:
        get_metric(name)
    for name in ev.model_metrics:
        get_model_metric(name)
    check_config(cfg)
    if ev.batch_size < 1 or any(v is not None and v < 1 for v in (ev.tokens_per_batch, ev.lm_eval_limit)):
        raise SSUError("eval.batch_size, eval.tokens_per_batch and eval.lm_eval_limit must be >= 1")
    if ev.lm_eval_include is not None and not Path(ev.lm_eval_include).is_dir():
        raise SSUError(f"eval.lm_eval_include: {ev.lm_eval_include} is not a directory")


def environment() -> dict[str, str]:
    """Library versions recorded with the config, for reproducibility."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("ssu", "torch", "transformers", "peft", "datasets", "accelerate", "rouge-score", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def dumps(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
