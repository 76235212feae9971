"""``ssu init``: create a run directory holding the fully resolved config.

Defaults <- a preset (``--method ssu-stable`` names one) <- a YAML file <- ``--set``
overrides, every component name checked against its registry and its args filled
(:mod:`ssu.recipes.components`), the model and the prepared data checked at the door,
then the device-aware defaults and the model card's advice filled in. The result is
written atomically with the library versions and the base model's fingerprint, so a
run can be reproduced from its directory alone.
"""

from __future__ import annotations

import copy
import platform
import sys
from pathlib import Path
from typing import Any

from ssu.config import RunConfig, load, merge
from ssu.errors import SSUError
from ssu.io import atomic_dir, atomic_write_json
from ssu.models.loading import check_model, model_card, model_identity, resolve_device
from ssu.presets import PRESETS
from ssu.recipes.components import resolve
from ssu.recipes.migrate import FORMAT
from ssu.recipes.run_dir import CONFIG, MANIFEST, model_fingerprint

DEFAULT_LR = 1e-5  # the public reference's learning rate for pre-trained 7B models
DEFAULT_EPOCHS = 1


def environment() -> dict[str, str]:
    """Library versions recorded with the config, for reproducibility."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("ssu", "torch", "transformers", "peft", "datasets", "accelerate", "rouge-score", "safetensors",
                "omegaconf", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


# Per device kind, the train settings `ssu init` writes unless the user gave them. CPU: the
# dataclass defaults (prompt sharing and one window per backward measured fastest on a
# 2-core CPU, benchmarks/step_cost.py). GPU: packed rows and a token budget per backward
# (at the 1.2B shape on one H100: prompt sharing with one-window chunks 36-41 s, two
# windows per backward 18.5 s, packed rows 10.6 s; docs/scaling.md).
DEVICE_DEFAULTS = {
    "cuda": {"share_prompts": False, "windows_per_backward": None, "tokens_per_backward": 16384},
}


def _method_name(value: Any) -> str | None:
    return value if isinstance(value, str) else value.get("name") if isinstance(value, dict) else None


def resolve_config(overrides: dict[str, Any] | None = None, sets: list[tuple[str, Any]] | tuple = ()) -> RunConfig:
    """Defaults <- the preset named as the method (if any) <- ``overrides`` <- ``sets``, checked.

    Nothing is read from disk; :func:`init_run` adds the checks of the model and data.
    """
    overrides = dict(overrides or {})
    named = _method_name(overrides.get("method"))
    for key, value in sets:
        if key == "method":
            named = _method_name(value)
    base: dict[str, Any] = {}
    if named in PRESETS:
        base = merge(copy.deepcopy(PRESETS.get(named).config), {"preset": named})
        given = overrides.pop("method", None)
        if isinstance(given, dict) and given.get("args"):  # args for the preset's method
            base = merge(base, {"method": {"args": given["args"]}})
        sets = [(k, v) for k, v in sets if k != "method"]
    return resolve(load(RunConfig, base, overrides, sets=sets))


def init_run(run_dir: str | Path, overrides: dict[str, Any] | None = None, overwrite: bool = False,
             sets: list[tuple[str, Any]] | tuple = ()) -> RunConfig:
    """Create RUN_DIR with the fully resolved config; return it."""
    from data_prep import load_schedule

    cfg = resolve_config(overrides, sets)
    if not cfg.model:
        raise SSUError("--model is required")
    if not cfg.data:
        raise SSUError("--data is required")
    load_schedule(cfg.data)  # fails early on a directory that is not prepared
    check_model(cfg.model, cfg.trust_remote_code)  # a missing path or an unresolvable hub id, in one line
    # Absolute paths, so the run directory works from any working directory.
    cfg.data = str(Path(cfg.data).resolve())
    if Path(cfg.model).exists():
        cfg.model = str(Path(cfg.model).resolve())
    # Unset lr/epochs: what the model's ssu card recommends (tiny models), else the
    # public reference's values for pre-trained 7B models.
    advice = model_card(cfg.model).get("recommended_unlearn", {}).get(cfg.train.finetune, {})
    if (cfg.train.lr is None or cfg.train.epochs is None) and not advice:
        print(f"note: train.lr / train.epochs unset and the model gives no unlearning advice: the reference's "
              f"values for 7B models (lr {DEFAULT_LR:g}, {DEFAULT_EPOCHS} epoch) -- set them for a small model",
              file=sys.stderr)
    if cfg.train.lr is None:
        cfg.train.lr = advice.get("lr", DEFAULT_LR)
    if cfg.train.epochs is None:
        cfg.train.epochs = advice.get("epochs", DEFAULT_EPOCHS)
    given = set((overrides or {}).get("train", {}) if isinstance((overrides or {}).get("train"), dict) else {})
    given |= {k.split(".")[1] for k, _ in sets if k.startswith("train.") and k.count(".") >= 1}
    chosen = device_defaults(cfg, given)
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists() and not overwrite:
        raise SSUError(f"{run_dir} is already a run directory (use --overwrite to start over)")
    record = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "environment": environment(),
        "base_model_sha256": model_fingerprint(cfg.model),
        "base_model": model_identity(cfg.model),  # per file, or hub id and revision (ssu audit)
        "data": cfg.data,
        "device_defaults": chosen,
    }
    with atomic_dir(run_dir, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / CONFIG, record)
        atomic_write_json(tmp / MANIFEST, {"steps": {}})
    return cfg


def device_defaults(cfg: RunConfig, given: set[str]) -> dict[str, Any]:
    """Fill the device-aware train settings the user left unset; return what was chosen."""
    kind = resolve_device(cfg.device).type
    chosen = {k: v for k, v in DEVICE_DEFAULTS.get(kind, {}).items() if k not in given}
    for k, v in chosen.items():
        setattr(cfg.train, k, v)
    return {"device": kind, "settings": chosen}
