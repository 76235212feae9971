"""Configuration: the run's schema, and the one way every config is read (OmegaConf).

A run's settings are one :class:`RunConfig`; ``ssu init`` resolves defaults <- an
optional YAML file <- ``--set key=value`` overrides and stores the result in
``RUN_DIR/config.json``, so a run can be reproduced from its directory alone.
Components own their parameters: the run config holds ``method: {name, args}`` and
``regularizers: [{name, args}, ...]`` blocks (open-unlearning's ``method_args``), and
each component declares its ``args`` as a dataclass in its own file
(``ssu/methods/ssu.py``'s ``SSU.Args``, ...), which the recipes build with
:func:`build` once the names are known. This module imports no registry.

One schema system for every config -- run, compare, memorize: :func:`load` merges
plain data over a dataclass's defaults with OmegaConf structured configs (typed
merge, ``1e-4`` read as a number, unknown keys rejected with the closest key), applies
``--set a.b=c`` overrides (``regularizers.0.args.lam=30`` reaches into a list), and
instantiates the dataclasses, whose ``__post_init__`` checks ranges. Every problem is
one :class:`~ssu.errors.SSUError` line naming the key.

Shorthand: a component block may be given by name alone -- ``method: ssu``,
``regularizers: [fisher, kl]`` -- and means ``{name: ..., args: {}}``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ssu.errors import SSUError

C = TypeVar("C")
ALL_LINEAR = "all-linear"
FINETUNES = ("lora", "full")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SSUError(message)


@dataclass
class ComponentSpec:
    """A component named in a config and its parameters (checked against its ``Args`` by the recipes)."""

    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraSettings:
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.01
    target_modules: Any = ALL_LINEAR  # "all-linear" or a list of module names

    def __post_init__(self) -> None:
        _check(self.r >= 1, "train.lora.r must be >= 1")
        _check(0 <= self.dropout < 1, "train.lora.dropout must be in [0, 1)")


@dataclass
class TrainSettings:
    lr: float | None = None  # None: the model card's recommendation, else 1e-5 (reference)
    epochs: int | None = None  # None: the model card's recommendation, else 1 (reference)
    batch_size: int = 2
    grad_accum: int = 2
    max_length: int = 512
    max_grad_norm: float = 1.0
    finetune: str = "lora"  # "lora" | "full"
    frozen: list[str] = field(default_factory=list)  # full fine-tune: names matching one (re.search) stay frozen
    # The next three are device-aware: `ssu init` writes GPU values into the run's config
    # unless they are given (ssu/recipes/init.py DEVICE_DEFAULTS); these are the CPU ones.
    share_prompts: bool = True  # forward each prompt once for its 1 + K rows (ssu/engine/prefix.py)
    # Windows per forward/backward inside a micro-batch. Activation memory scales with it;
    # the gradient does not change (each chunk is normalized by the micro-batch's totals).
    windows_per_backward: int | None = 1
    # Or a budget: as many windows per forward/backward as fit this many padded tokens
    # (at least one window); used when set, instead of windows_per_backward.
    tokens_per_backward: int | None = None
    gradient_checkpointing: bool = False  # recompute activations in the backward (packed rows only)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        _check(self.finetune in FINETUNES, "train.finetune must be lora or full")
        _check(self.lr is None or self.lr > 0, "train.lr must be > 0")
        _check((self.epochs is None or self.epochs >= 1) and self.batch_size >= 1 and self.grad_accum >= 1
               and self.max_length >= 8 and all(v is None or v >= 1 for v in (self.windows_per_backward,
                                                                              self.tokens_per_backward)),
               "train.epochs, train.batch_size, train.grad_accum, train.windows_per_backward and "
               "train.tokens_per_backward must be >= 1, train.max_length >= 8")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0: no clipping)")
        _check(not self.frozen or self.finetune == "full", "train.frozen applies to a full fine-tune only")


@dataclass
class CalibrateSettings:
    """α per step: the smallest that brings the removed book's score to a target
    (ssu/recipes/calibrate.py); what the score, target and constraints are: ssu/recipes/targets.py."""

    enabled: bool = False
    fraction: float = 0.5  # target: ROUGE-L <= fraction x the book's ROUGE-L at θ_{t-1}
    rouge: float | None = None  # or an absolute ROUGE-L target (used when set)
    alpha_max: float = 4.0
    iterations: int = 8  # bisection steps: α known to alpha_max / 2**iterations
    windows: int = 16  # per step, sampled from the removed books' windows
    early_stop: bool = False  # end the fine-tune at the first epoch that reaches the target (one process)
    share: float = 0.5  # of each removed book's windows for calibration; the rest are its audit windows
    target: str = "fraction"  # or "heldout": the never-seen level (held-out windows) + margin
    margin: float = 0.0
    shifted: list[str] = field(default_factory=list)  # prompt variants: a window scores its worst case
    offsets: list[int] = field(default_factory=lambda: [0])  # a window also read k words later (mean)
    earlier: bool = False  # earlier books stay <= max(target, their score at θ_{t-1}) + slack
    slack: float = 0.0
    keep: float | None = None  # the retain books' mean stays >= keep x its value at θ_{t-1}
    keep_from: str = "previous"  # or "memorized": floors at keep x the first step's reading (no compounding)
    keep_offsets: list[int] = field(default_factory=lambda: [0])  # each floor window read k words later too (mean)
    search: str = "bisect"  # or "scan": up alpha_min x ratio^k to the first crossing, then bisect
    alpha_min: float = 0.5
    ratio: float = 1.25
    patience: int = 0  # scan: grid points in a row whose check fails that it steps over (needs keep: floors)
    overshoot: float = 0.0  # take α × (1 + overshoot) past the crossing (≤ alpha_max) where its checks hold
    backoff: float = 0.0  # a check-limited α is taken × (1 − backoff): not on the edge of a flipped window

    def __post_init__(self) -> None:
        _check(self.alpha_max > 0 and self.iterations >= 0 and self.windows >= 1 and 0 < self.fraction <= 1
               and (self.rouge is None or 0 <= self.rouge <= 1) and 0 < self.share < 1,
               "calibrate: alpha_max > 0, iterations >= 0, windows >= 1, fraction in (0, 1], rouge in [0, 1], "
               "share in (0, 1)")
        _check(self.target in ("fraction", "heldout"), "calibrate.target must be fraction or heldout")
        _check(self.search in ("bisect", "scan") and 0 < self.alpha_min <= self.alpha_max and self.ratio > 1,
               "calibrate.search must be bisect or scan, 0 < alpha_min <= alpha_max, ratio > 1")
        _check(self.keep_from in ("previous", "memorized"), "calibrate.keep_from: previous or memorized")
        _check(self.patience == 0 or (self.patience > 0 and self.search == "scan" and self.keep is not None),
               "calibrate.patience: >= 0, and only with search: scan and keep (floors guard a broken model)")
        _check(all(bool(o) and min(o) >= 0 for o in (self.offsets, self.keep_offsets)),
               "calibrate.offsets and calibrate.keep_offsets: words >= 0, at least one")
        _check(0 <= self.margin <= 1 and 0 <= self.slack <= 1 and (self.keep is None or 0 < self.keep <= 1)
               and self.overshoot >= 0 and 0 <= self.backoff < 1, "calibrate.margin and calibrate.slack must be in "
               "[0, 1], calibrate.keep in (0, 1], calibrate.overshoot >= 0, calibrate.backoff in [0, 1)")


def _specs(*names: str) -> list[ComponentSpec]:
    return [ComponentSpec(n) for n in names]


@dataclass
class EvalSettings:
    enabled: bool = True
    max_windows: int | None = None  # per book, sampled with the run seed
    batch_size: int = 32  # prompts per generation batch; windows per log-probability forward
    # Or a budget for generation: at most this many (padded prompt + new) tokens per batch.
    tokens_per_batch: int | None = None
    metrics: list[str] = field(default_factory=lambda: [  # text metrics (ssu/metrics/)
        "rouge1_f", "rougeL_f", "rougeL_recall", "lcs_words", "acs_words", "verbatim_8gram",
    ])
    # Evaluation sets (ssu/eval/sets/) and user sets: name -> JSON lines path or {path, goal}.
    sets: list[str] = field(default_factory=lambda: [
        "removed-now", "removed-earlier", "retain", "future", "heldout"])
    extra_sets: dict[str, Any] = field(default_factory=dict)
    # Model-level metrics (ssu/eval/model_metrics/), e.g. {name: lm_eval, args: {tasks: [mmlu]}}.
    model_metrics: list[ComponentSpec] = field(default_factory=lambda: _specs("perplexity", "mia"))
    # Probes (ssu/eval/probes/), e.g. [shifted, {name: sampled, args: {k: 8}}], run on the
    # windows of probe_sets (removed books on their audit windows) after the metrics. The
    # default set is the worst case of the model as released (relearning trains, so it is
    # asked for by name); about 16 greedy passes over the probed windows.
    probes: list[ComponentSpec] = field(default_factory=lambda: _specs("shifted", "sampled", "quantized",
                                                                        "rounded"))
    probe_sets: list[str] = field(default_factory=lambda: ["removed-now", "removed-earlier", "heldout"])

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1 and (self.tokens_per_batch is None or self.tokens_per_batch >= 1)
               and (self.max_windows is None or self.max_windows >= 1),
               "eval.batch_size, eval.tokens_per_batch and eval.max_windows must be >= 1")


@dataclass
class GenericSettings:
    """What the regularizers protect beside the retain books (ssu/recipes/pool.py): ``windows``
    windows of general text from ``dir``, and ``others`` calibration-side windows of each book
    not yet removed (the owner's other memorized text; graded then on its audit side only), of
    which ``check`` per book are kept from the regularizers and read by its floor alone."""

    dir: str | None = None
    windows: int = 64
    others: int = 0
    check: int = 0

    def __post_init__(self) -> None:
        _check(self.windows >= 1 and self.others >= 0 and self.check >= 0,
               "generic.windows must be >= 1, generic.others and generic.check >= 0")


@dataclass
class RunConfig:
    model: str = ""
    data: str = ""
    preset: str | None = None  # the named bundle `ssu init --method` expanded (ssu/presets.py), if any
    method: ComponentSpec = field(default_factory=lambda: ComponentSpec("ssu"))
    # Protection composed with any method (ssu/regularizers/), applied in this order.
    regularizers: list[ComponentSpec] = field(default_factory=list)
    alpha: float = 1.0  # theta_t = theta_{t-1} + alpha * v_t
    seed: int = 0
    deterministic: bool = True  # deterministic kernels: reruns give identical bytes (ssu/engine/seeding.py)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    calibrate: CalibrateSettings = field(default_factory=CalibrateSettings)
    # Generic text beside the retain books in the step's retain pool (what the regularizers --
    # Fisher, retain mask, KL -- and a method's retain term see): a directory of .txt files
    # cut into windows like the books; never evaluated on.
    generic: GenericSettings = field(default_factory=lambda: GenericSettings())
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        names = [r.name for r in self.regularizers]
        _check(len(set(names)) == len(names), f"regularizers: each may appear once, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return load(cls, data)


# --- the one loader --------------------------------------------------------------------


def _error(e: Exception, where: str) -> SSUError:
    """One line from an OmegaConf error, naming the key (and the closest known key)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    msg = msg.removeprefix("Merge error: ")
    prefix = f"{where}: " if where else ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and key and msg.startswith("Key "):
        hint = msg.partition("Did you mean: ")[2].rstrip("?")
        return SSUError(f"{prefix}unknown config key {key!r}" + (f". Did you mean {hint}?" if hint else ""))
    return SSUError(f"{prefix}config key {key!r}: {msg}" if key else f"{prefix}{msg}")


def _check_set_key(cls, cfg, key: str) -> None:
    """A ``--set`` key the schema does not know (with the closest field), or one that indexes
    past the end of a list, said plainly."""
    import difflib

    from omegaconf import ListConfig, OmegaConf

    parts = key.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f". Did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
                raise SSUError(f"unknown config key {key!r}{hint}")
        tp = _type_at(cls, parts[: i + 1])
    for i, part in enumerate(parts[1:], start=1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]))
        if isinstance(node, ListConfig) and part.isdigit() and int(part) >= len(node):
            raise SSUError(f"--set {key}: {'.'.join(parts[:i])} has {len(node)} entr{'y' if len(node) == 1 else 'ies'}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_spec_list(tp) -> bool:
    return typing.get_origin(tp) is list and typing.get_args(tp) == (ComponentSpec,)


def _shorthand(tp, value: Any) -> Any:
    """``"ssu"`` -> ``{"name": "ssu"}`` where ``tp`` is a component block (or a list of them)."""
    if tp is ComponentSpec and isinstance(value, str):
        return {"name": value}
    if _is_spec_list(tp) and isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


def normalize(cls, data: Any) -> Any:
    """``data`` for dataclass ``cls`` with every component shorthand spelled out (recursively)."""
    if not (isinstance(data, dict) and dataclasses.is_dataclass(cls)):
        return data
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        tp = hints.get(key)
        value = _shorthand(tp, value)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            value = normalize(tp, value)
        out[key] = value
    return out


def _type_at(cls, path: list[str]):
    """The declared type at a dotted key path of dataclass ``cls`` (None where unknown)."""
    tp: Any = cls
    for part in path:
        if _is_spec_list(tp) and part.isdigit():
            tp = ComponentSpec
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part)
        else:
            return None
    return tp


def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", "regularizers=[fisher]"]`` -> ``[(key, value), ...]``, values read as YAML."""
    from omegaconf import OmegaConf

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SSUError(f"--set expects key=value, got {item!r}")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        except Exception as e:  # noqa: BLE001 - OmegaConf's grammar errors have no common base
            raise SSUError(f"--set {item!r}: cannot read the value ({str(e).splitlines()[0]})") from None
        out.append((key.strip(), value))
    return out


def load(cls: type[C], *layers: dict[str, Any] | None, sets: list[tuple[str, Any]] | tuple = (),
         where: str = "") -> C:
    """An instance of dataclass ``cls``: its defaults <- each mapping in ``layers`` <- ``sets``.

    ``sets`` are ``(dotted key, value)`` pairs (:func:`parse_set`); a key may index into
    a list (``regularizers.0.args.lam``). ``where`` prefixes error messages
    ("method ssu"). Raises :class:`SSUError` in one line on an unknown key, a value of
    the wrong type or a failed range check.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.structured(cls)
        for layer in layers:
            if layer:
                if not isinstance(layer, dict):
                    raise SSUError(f"{where + ': ' if where else ''}expected a mapping of keys to values, "
                                   f"got {layer!r}")
                cfg = OmegaConf.merge(cfg, normalize(cls, layer))
        for key, value in sets:
            _check_set_key(cls, cfg, key)
            value = _shorthand(_type_at(cls, key.split(".")), value)
            OmegaConf.update(cfg, key, value, merge=True)
        order = {f.name: i for i, f in enumerate(dataclasses.fields(cls))}
        missing = sorted(OmegaConf.missing_keys(cfg), key=lambda k: (order.get(k.split(".")[0], len(order)), k))
        if missing:
            raise SSUError(f"{where + ' ' if where else ''}needs {', '.join(missing)}")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _error(e, where) from None


def build(cls: type[C] | None, args: dict[str, Any] | None, where: str) -> C | None:
    """A component's typed parameters from a config block's ``args`` (None if it takes none)."""
    if cls is None:
        if args:
            raise SSUError(f"{where} takes no args, got {sorted(args)}")
        return None
    return load(cls, dict(args or {}), where=where)


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if obj is not None else {}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested merge of plain mappings (``over`` wins); used to stack recipe bundles and overrides."""
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file as a plain mapping (OmegaConf's reader: ``1e-4`` is a number)."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(Path(path))) or {}
    except Exception as e:  # noqa: BLE001 - file and YAML errors alike become one line
        raise SSUError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SSUError(f"config {path} must be a mapping of keys to values")
    return data


def dumps(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
