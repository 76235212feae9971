"""``ssu step RUN T``: one time step of sequential unlearning, as a recipe in five phases.

1. **set up** (:func:`set_up`): θ_{T−1} = base + the stack of steps < T, the method and
   regularizers built from the config, D_f^T from the prepared data and the schedule,
   a trainable copy (LoRA adapter, or full weights with a pre-step snapshot);
2. **train** (:func:`ssu.engine.finetune.finetune`): the one training loop;
3. **extract** (:func:`extract`): v_T = sign · (θ_ft − θ_{T−1}) -- for SSU the negated
   task vector -- through every regularizer's ``vector`` hook;
4. **calibrate** (:func:`ssu.recipes.calibrate.calibrate_step`, when configured): α_T;
5. **save** (:func:`save`): the step directory written atomically, then the manifest
   entry, last -- so a crash at any point leaves either no trace of the step or the
   complete step, and a re-run gives the same bytes.

Only this recipe and the others in ``ssu/recipes/`` read the run directory and the
schedule; the components below get windows, models and settings.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ssu.config import RunConfig
from ssu.engine.distributed import Processes
from ssu.engine.finetune import FinetuneResult, Hooks, StepHook, finetune, frozen_names
from ssu.engine.forget_set import ForgetSet, build_forget_set
from ssu.engine.precision import STACK_ADAPTER, STEP_ADAPTER, ReferenceView, add_step_adapter, check_supported
from ssu.engine.seeding import seed_everything
from ssu.errors import SSUError
from ssu.io import atomic_dir, atomic_write_json, sha256_file
from ssu.methods import UnlearningMethod
from ssu.models.loading import load_tokenizer, resolve_device, resolve_dtype
from ssu.recipes.calibrate import EarlyStop, audit_split, calibrate_step, calibration_windows
from ssu.recipes.components import build_method, build_regularizers, method_label
from ssu.recipes.compose import load_composed
from ssu.recipes.pool import checked, other_windows, protected_rows
from ssu.recipes.run_dir import VECTOR, RunDir
from ssu.regularizers import Regularized, Regularizer
from ssu.vectors import LoraTaskVector, TaskVector


@dataclass
class StepSetup:
    """Everything phase 1 prepares for the rest of the step."""

    run: RunDir
    cfg: RunConfig
    step: int
    procs: Processes
    tokenizer: Any
    model: Any  # the trainable model (peft-wrapped for LoRA)
    snapshot: dict | None  # θ_{T−1} of a full fine-tune, float32, this process's part; None for LoRA
    method: UnlearningMethod  # wrapped by Regularized when a regularizer adds a loss term
    regularizers: list[Regularizer]
    fs: ForgetSet
    reference: Any = None
    # the removed books' windows apart for calibration (``audit_split``), when the step tunes on any
    split: dict[str, dict] | None = None
    calibration_windows: list[dict] = field(default_factory=list)
    request: dict | None = None  # the takedown request this step serves: {"id", "note"}
    level: dict | None = None  # the never-seen level calibration aims at (calibrate.target: heldout)
    earlier_windows: dict[str, list[dict]] = field(default_factory=dict)  # constrained calibration
    kept_windows: dict[str, list[dict]] = field(default_factory=dict)  # retain books' floors (calibrate.keep)
    pooled: dict[str, list[dict]] = field(default_factory=dict)  # generic.others: book -> its floor's windows
    early: EarlyStop | None = None
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def run_step(run_dir: str | Path, step: int, force: bool = False, progress: bool = True,
             on_step: StepHook | None = None, request_id: str | None = None,
             note: str | None = None) -> dict | None:
    """Perform time step ``step``; return its manifest entry (None if already complete).

    ``request_id`` / ``note``: the takedown request the step serves, recorded in the
    manifest (over the one the prepared data's schedule names for the step, if any).
    """
    run = RunDir(run_dir)
    procs = Processes(resolve_device(run.config.device))  # one process, or its place under `accelerate launch`
    if step in run.completed_steps():
        if not force:
            return None
        if procs.is_main:
            run.drop_from(step)
        procs.barrier()
    run.check_ready(step)
    setup = set_up(run, step, procs)
    setup.request = takedown_request(run.config.data, step, request_id, note)
    result = finetune(setup.model, setup.method, setup.fs, setup.cfg.train,
                      Hooks(on_step=on_step, on_epoch=setup.early, progress=progress),
                      reference=setup.reference, procs=procs)
    for r in setup.regularizers:
        r.finish()
    vector, alpha, calibration = extract_and_calibrate(setup, result)
    if not procs.is_main:  # every process holds the same weights; one writes them
        procs.barrier()
        return run.step_record(step)
    entry = save(setup, result, vector, alpha, calibration)
    procs.barrier()
    return entry


# --- 1. set up ------------------------------------------------------------------------


def step_windows(data: str | Path, step: int) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """(books removed at ``step``, their windows, the retain windows, the windows of books
    removed at earlier steps) from the prepared directory ``data`` and its schedule."""
    from data_prep import load_schedule, read_window_rows

    steps = load_schedule(data)["steps"]
    if step not in steps:
        raise SSUError(f"the schedule has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    books = list(steps[step])
    earlier_books = {b for t, bs in steps.items() if t < step for b in bs}
    rows = read_window_rows(data)
    forget = [w for w in rows if w["role"] == "forget"]
    windows = [w for w in forget if w["book"] in books]
    if not windows:
        raise SSUError(f"step {step} has no windows in {data}")
    return (books, windows, [w for w in rows if w["role"] == "retain"],
            [w for w in forget if w["book"] in earlier_books])


def set_up(run: RunDir, step: int, procs: Processes) -> StepSetup:
    cfg = run.config
    if procs.sharded and cfg.calibrate.enabled:  # it generates on the main process alone
        raise SSUError("calibrate.enabled is not supported under FSDP yet; calibrate on one GPU or under DDP")
    if procs.distributed and cfg.calibrate.early_stop:  # every process would have to agree each epoch
        raise SSUError("calibrate.early_stop is supported on one process only")
    dev = procs.device or resolve_device(cfg.device)
    check_supported(cfg.train.finetune, resolve_dtype(cfg.dtype, dev))
    method = build_method(cfg)
    if procs.sharded and method.generates:
        raise SSUError(f"method {method.name} decodes during training, which FSDP does not support yet; use DDP")
    regularizers = build_regularizers(cfg, method.sign)
    if procs.sharded and not all(r.fsdp for r in regularizers):
        names = ", ".join(r.name for r in regularizers if not r.fsdp)
        raise SSUError(f"regularizer {names} is not supported under FSDP (it keeps per-weight state); use DDP")
    seed_everything(cfg.seed + step, cfg.deterministic)
    started = time.perf_counter()
    if procs.is_main:
        run.verify_chain()  # a step is recorded only on top of an intact record

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_composed(run, upto=step - 1, device=dev)
    books, windows, retain, earlier = step_windows(cfg.data, step)
    wants_retain = method.needs_retain or any(r.needs_retain for r in regularizers)
    # ssu/recipes/pool.py: the other books' calibration sides, split between the regularizers and the floors
    pooled, floors = checked(cfg, step, other_windows(cfg, step))
    if wants_retain:
        retain = protected_rows(cfg, retain, pooled)
    fs = build_forget_set(step, windows, tokenizer, k_random=getattr(method.args, "k_random", 3),
                          with_random=method.uses_random_labels, retain=retain if wants_retain else None,
                          earlier=earlier if any(r.needs_earlier for r in regularizers) else None,
                          seed=cfg.seed + step, max_length=cfg.train.max_length, books=books)
    model = trainable(model, cfg)
    method.prepare(model, fs)
    for r in regularizers:
        r.prepare(model, fs)  # at θ_{T−1}, before any weight moves
    fs.shared.clear()  # the regularizers keep what they need
    if any(r.has_loss for r in regularizers):
        method = Regularized(method, regularizers)
    reference = None
    if method.needs_reference:
        # LoRA: θ_{t-1} is the trained model with its step adapter off (no copy); a full
        # fine-tune changes every weight, so it needs a frozen copy (taken before sharding).
        reference = ReferenceView(model) if cfg.train.finetune == "lora" else \
            copy.deepcopy(model).eval().requires_grad_(False)
    snapshot = None
    if cfg.train.finetune == "full":
        model = procs.shard(model)  # FSDP: the snapshot below is then this process's shards only
        snapshot = procs.snapshot(model)
    setup = StepSetup(run=run, cfg=cfg, step=step, procs=procs, tokenizer=tokenizer, model=model,
                      snapshot=snapshot, method=method, regularizers=regularizers, fs=fs, reference=reference,
                      started=started, pooled=floors)
    if cfg.calibrate.enabled or cfg.calibrate.early_stop:  # tuned on the book: keep audit windows apart
        setup.split = audit_split(windows, cfg.calibrate.share, cfg.seed + step)
        setup.calibration_windows = calibration_windows(windows, setup.split)
        set_targets(setup, model)
    if cfg.calibrate.early_stop:
        setup.early = EarlyStop(model, snapshot, setup.calibration_windows, tokenizer, cfg, cfg.seed + step,
                                method.sign, lambda: step_vector(setup, model, setup.snapshot), setup.level)
    setup.seconds = time.perf_counter() - started
    return setup


def set_targets(setup: StepSetup, model) -> None:
    """What calibration aims at (ssu/recipes/targets.py): the never-seen level -- recorded by an
    earlier step, else measured now on held-out windows at θ_{T−1} -- and the calibration
    windows of the books removed before, when ``calibrate.earlier`` constrains α by them."""
    from data_prep import read_window_rows
    from ssu.recipes.targets import earlier_calibration_windows, never_seen_level, recorded_level

    cfg, steps = setup.cfg, setup.run.manifest["steps"]
    heldout_target = cfg.calibrate.target == "heldout" and cfg.calibrate.rouge is None
    if not (heldout_target or cfg.calibrate.earlier or cfg.calibrate.keep):
        return
    rows = read_window_rows(cfg.data)
    if heldout_target:
        setup.level = recorded_level(steps, setup.step)
        if setup.level is None:
            from ssu.recipes.calibrate import sample_windows

            heldout = sample_windows([w for w in rows if w["role"] == "heldout"], cfg.calibrate.windows,
                                     cfg.seed + setup.step)
            was_training = model.training
            model.eval()
            setup.level = never_seen_level(model, setup.tokenizer, heldout, cfg, setup.step)
            model.train(was_training)
    if cfg.calibrate.earlier:
        setup.earlier_windows = earlier_calibration_windows(
            steps, setup.step, [w for w in rows if w["role"] == "forget"])
    if cfg.calibrate.keep:  # the retain books' mean (5 windows a book flip in steps of 0.1), each pooled book
        setup.kept_windows = {"retain": [w for w in rows if w["role"] == "retain"], **setup.pooled}


def trainable(model, cfg: RunConfig):
    """Wrap with a LoRA step adapter (beside the frozen stack adapter, if any), or make every
    weight trainable for a full fine-tune but those ``train.frozen`` names."""
    if cfg.train.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = cfg.train.lora
        peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")
        try:
            with warnings.catch_warnings():
                # peft notices GPT-2's Conv1D layers itself and says so; nothing to act on.
                warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
                # peft calls a transformers property that transformers now marks deprecated.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                if STACK_ADAPTER in getattr(model, "peft_config", {}):
                    add_step_adapter(model, peft_cfg)
                else:
                    model = get_peft_model(model, peft_cfg, adapter_name=STEP_ADAPTER)
        except ValueError as e:
            raise SSUError(f"cannot apply LoRA: {str(e).splitlines()[0]}") from e
    else:
        model.requires_grad_(True)
        for name in frozen_names(model, cfg.train.frozen):
            model.get_parameter(name).requires_grad_(False)
    _checkpointing(model, cfg)
    return model


def _checkpointing(model, cfg: RunConfig) -> None:
    """Gradient checkpointing when asked: activations recomputed in the backward. The
    non-reentrant variant needs no input that requires grad (LoRA's frozen embeddings)."""
    if cfg.train.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name for it
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# --- 3. extract, 4. calibrate ------------------------------------------------------------


def step_vector(setup: StepSetup, model, snapshot):
    """The step's vector as it is calibrated and stored (also what early stop tries after each
    epoch): the change times the method's sign, through every regularizer's :meth:`vector`.
    None on processes other than the main one."""
    sign = float(setup.method.sign)
    if setup.cfg.train.finetune == "lora":
        change = LoraTaskVector.from_peft_model(model, STEP_ADAPTER) if setup.procs.is_main else None
        vector = change * sign if change is not None else None
    else:
        deltas = setup.procs.change(model, snapshot)  # a collective under FSDP
        # the step's own tensors: the sign and the regularizers scale them in place (one float32
        # copy of the weights while the vector is taken, not one per operation)
        vector = TaskVector(deltas).mul_(sign) if deltas is not None else None
    if vector is None:
        return None
    for r in setup.regularizers:
        vector = r.vector(vector, model)
    return vector


def extract_and_calibrate(setup: StepSetup, result: FinetuneResult):
    """Phases 3 and 4 on the trained model: (vector, α, calibration record or None)."""
    cfg, procs = setup.cfg, setup.procs
    if cfg.train.finetune == "full":  # per shard under FSDP: no full parameters needed
        vector = step_vector(setup, procs.unwrap(result.model), setup.snapshot)
        trained = procs.unwrap(result.model)
        return vector, *_calibrated(setup, trained, vector)
    with procs.full_parameters(result.model) as trained:  # a collective under FSDP
        vector = step_vector(setup, trained, None)
        return vector, *_calibrated(setup, trained, vector)


def _calibrated(setup: StepSetup, trained, vector) -> tuple[float, dict | None]:
    cfg = setup.cfg
    if not (setup.procs.is_main and cfg.calibrate.enabled):
        return cfg.alpha, None
    calibration = calibrate_step(trained, vector, setup.snapshot, setup.calibration_windows, setup.tokenizer, cfg,
                                 cfg.seed + setup.step, setup.method.sign, setup.level, setup.earlier_windows,
                                 setup.kept_windows, setup.run.manifest["steps"].get(str(setup.step - 1), {})
                                 .get("calibration"))
    return calibration["alpha"], calibration


# --- 5. save --------------------------------------------------------------------------------


def save(setup: StepSetup, result: FinetuneResult, vector, alpha: float, calibration: dict | None) -> dict:
    """Write the step directory atomically, then record the step in the manifest (last)."""
    run, cfg, step, method = setup.run, setup.cfg, setup.step, setup.method
    metadata = {
        "step": step, "books": setup.fs.books, "method": method_label(cfg), "alpha": alpha,
        "sign": method.sign, "finetune": cfg.train.finetune,
        "base_model_sha256": run.record["base_model_sha256"],
    }
    with atomic_dir(run.step_dir(step), overwrite=True) as tmp:
        vector.save(tmp / VECTOR, metadata)
        atomic_write_json(tmp / "step.json", {**metadata, "train": result.stats()})
    entry = {
        **metadata,
        "n_windows": len(setup.fs.learn),
        "precision": _precision(setup.model),
        # how the step ran: a plain process, DDP or FSDP; the pre-step snapshot this (main)
        # process held -- under FSDP its shards only -- against the whole weights' float32 bytes
        "processes": {"kind": setup.procs.kind, "world": setup.procs.world,
                      "snapshot_bytes": sum(t.numel() * t.element_size() for t in (setup.snapshot or {}).values()),
                      "float32_bytes": 4 * sum(p.numel() for p in setup.procs.unwrap(result.model).parameters()
                                               if p.requires_grad)},  # a DTensor's numel is the whole tensor's
        "hyperparameters": {"lr": cfg.train.lr, "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
                            "grad_accum": cfg.train.grad_accum, "method": dict(cfg.method.args),
                            "saliency": method.saliency_mode, "seed": cfg.seed + step},
        "artifacts": {VECTOR: {"path": f"step_{step}/{VECTOR}", "sha256": sha256_file(run.vector_path(step)),
                               "bytes": run.vector_path(step).stat().st_size}},
        "timings": {"load_seconds": round(setup.seconds, 3), "train_seconds": result.seconds,
                    "total_seconds": round(time.perf_counter() - setup.started, 3)},
        "final_loss": result.losses[-1] if result.losses else None,
    }
    entry.update(evidence(setup, alpha, calibration))
    if setup.regularizers:
        entry["regularizers"] = {r.name: r.record() for r in setup.regularizers}
    if calibration is not None:
        entry["calibration"] = calibration
    if setup.early is not None:
        entry["early_stop"] = {**setup.early.record(), "epochs_run": setup.early.stopped_at or cfg.train.epochs}
    run.record_step(step, entry)  # last: the step now counts as complete
    return entry


def takedown_request(data: str, step: int, request_id: str | None, note: str | None) -> dict | None:
    """The request a step serves: the command line's, over the one the schedule names."""
    from data_prep import load_schedule

    given = dict(load_schedule(data).get("requests", {}).get(str(step), {}))
    if request_id is not None:
        given["id"] = request_id
    if note is not None:
        given["note"] = note
    return given or None


def evidence(setup: StepSetup, alpha: float, calibration: dict | None) -> dict:
    """What the audit record needs of a step (``ssu audit``): the request, the time, what
    exactly was removed (hashes of each book's text and prepared windows), how α was
    chosen, the config's digest and the windows kept apart from calibration."""
    from data_prep import book_digests

    run, cfg = setup.run, setup.cfg
    digests = book_digests(cfg.data, setup.fs.books)
    out = {
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "removed": {b: digests[b] for b in setup.fs.books},
        "alpha_source": "calibrated" if calibration is not None else "config",
        "config_sha256": run.config_digest(),
    }
    if setup.request:
        out["request"] = setup.request
    if setup.split is not None:
        out["split"] = setup.split
    return out


def _precision(model) -> dict[str, str]:
    """What the step trained in: the weights' dtype, the forward's, and how the stack was held."""
    weights = next(model.parameters()).dtype  # the embedding: base weights, never a LoRA factor
    compute = getattr(model, "ssu_compute_dtype", weights)
    stack = "adapter" if STACK_ADAPTER in getattr(model, "peft_config", {}) else "merged"
    return {"weights": str(weights).removeprefix("torch."), "compute": str(compute).removeprefix("torch."),
            "stack": stack}
