"""The run's schema: one :class:`RunConfig` of typed settings, each block a dataclass.

Components own their parameters: the run config holds ``method: {name, args}`` and
``regularizers: [{name, args}, ...]`` blocks (open-unlearning's ``method_args``), and each
component declares its ``args`` as a dataclass in its own file (``ssu/methods/ssu.py``'s
``SSU.Args``, ...), which the recipes build with :func:`~ssu.config.loader.build` once the
names are known. Ranges are checked in ``__post_init__`` (one line naming the key).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssu.config.loader import ComponentSpec, load
from ssu.config.loader import check as _check

ALL_LINEAR = "all-linear"
FINETUNES = ("lora", "full")


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
    which ``check`` per book are kept from the regularizers and read by its floor alone; with
    ``prompt_words`` every row the regularizers read is re-cut to that many prompt words."""

    dir: str | None = None
    windows: int = 64
    others: int = 0
    check: int = 0
    prompt_words: int | None = None

    def __post_init__(self) -> None:
        _check(self.windows >= 1 and self.others >= 0 and self.check >= 0,
               "generic.windows must be >= 1, generic.others and generic.check >= 0")
        _check(self.prompt_words is None or self.prompt_words >= 1, "generic.prompt_words must be >= 1")


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
