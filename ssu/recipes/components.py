"""The run config's components, checked against their registries and built.

``ssu/config/`` knows the shape of a run config but no registry; this is where a
config's names meet them. :func:`resolve` checks every name (method, regularizers,
text metrics, evaluation sets, model metrics, probes) and fills each block's ``args`` with the
component's own ``Args`` dataclass -- defaults included, so the stored config names
every parameter the run used. The ``build_*`` functions make the objects a step or an
evaluation runs.
"""

from __future__ import annotations

from typing import Any

from ssu.config import ComponentSpec, RunConfig, as_dict, build
from ssu.errors import SSUError
from ssu.eval.model_metrics import MODEL_METRICS, ModelMetric
from ssu.eval.probes import PROBES, Probe
from ssu.eval.probes.shifted import VARIANTS
from ssu.eval.sets import check_config, get_eval_set
from ssu.methods import METHODS, UnlearningMethod
from ssu.metrics import METRICS
from ssu.regularizers import REGULARIZERS, Regularizer


def _typed_args(registry, spec: ComponentSpec) -> Any:
    cls = registry.get(spec.name)
    return build(getattr(cls, "Args", None), spec.args, where=f"{registry.kind} {spec.name}")


def filled(registry, spec: ComponentSpec) -> ComponentSpec:
    return ComponentSpec(spec.name, as_dict(_typed_args(registry, spec)))


def resolve(cfg: RunConfig) -> RunConfig:
    """Check every component name of ``cfg`` and fill its args (in place); return ``cfg``."""
    cfg.method = filled(METHODS, cfg.method)
    cfg.regularizers = [filled(REGULARIZERS, r) for r in cfg.regularizers]
    for name in cfg.eval.metrics:
        METRICS.get(name)
    names = [m.name for m in cfg.eval.model_metrics]
    if len(set(names)) != len(names):
        raise SSUError(f"eval.model_metrics: each may appear once, got {names}")
    cfg.eval.model_metrics = [filled(MODEL_METRICS, m) for m in cfg.eval.model_metrics]
    names = [p.name for p in cfg.eval.probes]
    if len(set(names)) != len(names):
        raise SSUError(f"eval.probes: each may appear once, got {names}")
    cfg.eval.probes = [filled(PROBES, p) for p in cfg.eval.probes]
    check_config(cfg)
    bad = [v for v in cfg.calibrate.shifted if v not in VARIANTS]
    if bad:
        raise SSUError(f"calibrate.shifted: choose from {', '.join(VARIANTS)} (got {', '.join(map(str, bad))})")
    for name in cfg.eval.probe_sets:
        get_eval_set(name, cfg)
        if name not in list(cfg.eval.sets) + list(cfg.eval.extra_sets):
            raise SSUError(f"eval.probe_sets: {name!r} is not evaluated (not in eval.sets or eval.extra_sets)")
    return cfg


def build_method(cfg: RunConfig) -> UnlearningMethod:
    return METHODS.get(cfg.method.name)(_typed_args(METHODS, cfg.method))


def build_regularizers(cfg: RunConfig, sign: int) -> list[Regularizer]:
    return [REGULARIZERS.get(r.name)(_typed_args(REGULARIZERS, r), sign=sign, seed=cfg.seed)
            for r in cfg.regularizers]


def build_model_metrics(specs: list[ComponentSpec]) -> list[ModelMetric]:
    return [MODEL_METRICS.get(s.name)(_typed_args(MODEL_METRICS, s)) for s in specs]


def build_probes(specs: list[ComponentSpec]) -> list[Probe]:
    return [PROBES.get(s.name)(_typed_args(PROBES, s)) for s in specs]


def method_label(cfg: RunConfig) -> str:
    """How messages and comparisons name a run's method: the preset if one made it."""
    return cfg.preset or cfg.method.name
