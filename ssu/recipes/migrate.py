"""Read a run directory made by an earlier release: its config migrated on read.

Release 0.1's ``ssu init`` wrote one flat config -- ``method: ssu-stable``,
``epsilon``, ``npo_beta``, ``regularizers: [fisher]``, ``fisher_lambda``, ...,
``eval.lm_eval_tasks`` -- where each component now owns its parameters in a block
(``method: {name, args}``, ``regularizers: [{name, args}]``, ``eval.model_metrics:
[{name, args}]``). :func:`migrate` maps the old keys onto the blocks (a method keeps
only the parameters its ``Args`` declares, as it only ever read those) and says so in
one line on stderr; the directory itself is left as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ssu.methods import METHODS
from ssu.registry import args_of

FORMAT = 2  # record format written by this release's `ssu init`

METHOD_KEYS = {"epsilon": "epsilon", "k_random": "k_random", "saliency": "saliency", "saliency_k": "saliency_k",
               "saliency_density": "saliency_density", "npo_beta": "beta", "retain_weight": "retain_weight"}
REGULARIZER_KEYS = {
    "fisher": {"fisher_lambda": "lam", "fisher_windows": "windows"},
    "kl": {"kl_lambda": "lam", "kl_windows": "windows"},
    "retain-mask": {"retain_mask_fraction": "fraction", "retain_mask_windows": "windows"},
    "guard": {"guard_weight": "weight", "guard_windows": "windows"},
}
PRESET_METHODS = {"ssu-stable": "ssu"}  # 0.1 registered the preset as a method
_noticed: set[str] = set()


def is_legacy(record: dict[str, Any]) -> bool:
    return record.get("format") is None and isinstance(record.get("config", {}).get("method"), str)


def migrate(config: dict[str, Any]) -> dict[str, Any]:
    """A 0.1 run config as this release's blocks."""
    c = dict(config)
    method = c.pop("method")
    flat = {k: c.pop(k) for k in list(c) if k in METHOD_KEYS}
    if method in PRESET_METHODS:
        c["preset"], method = method, PRESET_METHODS[method]
    known = {name for name, _ in args_of(METHODS.get(method))}
    c["method"] = {"name": method, "args": {new: flat[old] for old, new in METHOD_KEYS.items()
                                            if old in flat and new in known}}
    flat_r = {k: c.pop(k) for k in list(c) if any(k in keys for keys in REGULARIZER_KEYS.values())}
    c["regularizers"] = [{"name": r, "args": {new: flat_r[old] for old, new in REGULARIZER_KEYS.get(r, {}).items()
                                              if old in flat_r}} for r in c.get("regularizers", [])]
    ev = dict(c.get("eval", {}))
    tasks, include, limit = ev.pop("lm_eval_tasks", []), ev.pop("lm_eval_include", None), ev.pop("lm_eval_limit", None)
    metrics = [{"name": n} for n in ev.get("model_metrics", []) if n != "lm_eval"]
    if tasks:
        metrics.append({"name": "lm_eval", "args": {"tasks": tasks, "include": include, "limit": limit}})
    ev["model_metrics"] = metrics
    c["eval"] = ev
    return c


def notice(path: Path) -> None:
    """Say once per process and run directory that its config was migrated."""
    key = str(Path(path).resolve())
    if key not in _noticed:
        _noticed.add(key)
        print(f"note: {path} was made by ssu 0.1; its config is read in this release's layout "
              f"(method and regularizer blocks); the directory is unchanged", file=sys.stderr)
