"""``ssu init`` and ``ssu step``: one time step of sequential unlearning.

A step loads theta_{T-1} = base + (stack of steps < T), builds D_f^T from the
schedule, lets the method fine-tune a copy (full or LoRA), turns the change into
the stored vector v_T = sign * (theta_ft - theta_{T-1}) -- for SSU the negated task
vector -- and appends it to the stack with its alpha. The step directory is
written atomically and the manifest last, so a crash at any point leaves either
no trace of the step or the complete step, and a re-run gives the same bytes.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from data_prep.fsutil import atomic_dir, atomic_write_json, sha256_file
from ssu.config import RunConfig, environment, merge, resolve
from ssu.engine.calibrate import EarlyStop, calibrate_step
from ssu.engine.distributed import Processes
from ssu.engine.finetune import StepHook, finetune
from ssu.engine.forget_set import build_forget_set
from ssu.engine.precision import STACK_ADAPTER, STEP_ADAPTER, ReferenceView, add_step_adapter, check_supported
from ssu.engine.regularizers import Regularized, get_regularizer
from ssu.engine.seeding import seed_everything
from ssu.errors import SSUError
from ssu.methods import get_method
from ssu.models.loading import load_tokenizer, model_card, resolve_device, resolve_dtype
from ssu.run import CONFIG, VECTOR, RunDir, model_fingerprint
from ssu.vectors import LoraTaskVector, TaskVector
from ssu.vectors.compose import load_composed

DEFAULT_LR = 1e-5  # the public reference's learning rate for pre-trained 7B models
DEFAULT_EPOCHS = 1


def init_run(run_dir: str | Path, overrides: dict[str, Any], overwrite: bool = False) -> RunConfig:
    """Create RUN_DIR with the fully resolved config."""
    from data_prep import load_schedule

    cfg = resolve(merge(copy.deepcopy(get_method(overrides.get("method", "ssu")).recipe), overrides))
    if not cfg.model:
        raise SSUError("--model is required")
    if not cfg.data:
        raise SSUError("--data is required")
    load_schedule(cfg.data)  # fails early on a directory that is not prepared
    # Absolute paths, so the run directory works from any working directory.
    cfg.data = str(Path(cfg.data).resolve())
    if Path(cfg.model).exists():
        cfg.model = str(Path(cfg.model).resolve())
    # Unset lr/epochs: what the model's ssu card recommends (tiny models), else the
    # public reference's values for pre-trained 7B models.
    advice = model_card(cfg.model).get("recommended_unlearn", {}).get(cfg.train.finetune, {})
    if cfg.train.lr is None:
        cfg.train.lr = advice.get("lr", DEFAULT_LR)
    if cfg.train.epochs is None:
        cfg.train.epochs = advice.get("epochs", DEFAULT_EPOCHS)
    chosen = _device_defaults(cfg, overrides)
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists() and not overwrite:
        raise SSUError(f"{run_dir} is already a run directory (use --overwrite to start over)")
    record = {
        "config": cfg.to_dict(),
        "environment": environment(),
        "base_model_sha256": model_fingerprint(cfg.model),
        "data": str(Path(cfg.data).resolve()),
        "device_defaults": chosen,
    }
    with atomic_dir(run_dir, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / CONFIG, record)
        atomic_write_json(tmp / "manifest.json", {"steps": {}})
    return cfg


# Per device kind, the train settings `ssu init` writes unless the user gave them. CPU: the
# dataclass defaults (prompt sharing and one window per backward measured fastest on a
# 2-core CPU, benchmarks/step_cost.py). GPU: from the figures measured on one H100 in the
# issue "The engine on accelerate" -- at the 1.2B shape prompt sharing with one-window
# chunks took 36-41 s, two windows per backward 18.5 s, and packed rows 10.6 s -- so
# packed rows and a token budget per backward (benchmarks/gpu_step.py measures it).
DEVICE_DEFAULTS = {
    "cuda": {"share_prompts": False, "windows_per_backward": None, "tokens_per_backward": 16384},
}


def _device_defaults(cfg: RunConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """Fill the device-aware train settings the user left unset; return what was chosen."""
    kind = resolve_device(cfg.device).type
    given = overrides.get("train", {}) if isinstance(overrides.get("train"), dict) else {}
    chosen = {k: v for k, v in DEVICE_DEFAULTS.get(kind, {}).items() if k not in given}
    for k, v in chosen.items():
        setattr(cfg.train, k, v)
    return {"device": kind, "settings": chosen}


def run_step(run_dir: str | Path, step: int, force: bool = False, progress: bool = True,
             on_step: StepHook | None = None) -> dict | None:
    """Perform time step ``step``; return its manifest entry (None if already complete)."""
    run = RunDir(run_dir)
    cfg = run.config
    procs = Processes(resolve_device(cfg.device))  # one process, or its place under `accelerate launch`
    if step in run.completed_steps():
        if not force:
            return None
        if procs.is_main:
            run.drop_from(step)
        procs.barrier()
    run.check_ready(step)
    if procs.sharded and cfg.calibrate.enabled:  # it generates on the main process alone
        raise SSUError("calibrate.enabled is not supported under FSDP yet; calibrate on one GPU or under DDP")
    if procs.distributed and cfg.calibrate.early_stop:  # every process would have to agree each epoch
        raise SSUError("calibrate.early_stop is supported on one process only")
    dev = procs.device or resolve_device(cfg.device)
    check_supported(cfg.train.finetune, resolve_dtype(cfg.dtype, dev))
    method = get_method(cfg.method)(cfg)
    seed_everything(cfg.seed + step, cfg.deterministic)
    t0 = time.perf_counter()

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_composed(run, upto=step - 1, device=dev)
    regularizers = [get_regularizer(name)(cfg, sign=method.sign) for name in cfg.regularizers]
    if procs.sharded and not all(r.fsdp for r in regularizers):
        names = ", ".join(r.name for r in regularizers if not r.fsdp)
        raise SSUError(f"regularizer {names} is not supported under FSDP (it hooks each weight); use DDP")
    fs = build_forget_set(cfg.data, step, tokenizer, k_random=cfg.k_random,
                          with_random=method.uses_random_labels,
                          with_retain=method.needs_retain or any(r.needs_retain for r in regularizers),
                          seed=cfg.seed + step, max_length=cfg.train.max_length)
    trainable, snapshot = _prepare_trainable(model, cfg)
    for r in regularizers:
        r.prepare(trainable, fs, tokenizer)
    fs.shared.clear()  # the regularizers keep what they need
    if any(r.has_loss for r in regularizers):
        method = Regularized(method, regularizers)
    reference = None
    if method.needs_reference:
        # LoRA: θ_{t-1} is the trained model with its step adapter off (no copy); a full
        # fine-tune changes every weight, so it needs a frozen copy.
        reference = ReferenceView(trainable) if snapshot is None else \
            copy.deepcopy(model).eval().requires_grad_(False)
    t_load = time.perf_counter() - t0
    early = None
    if cfg.calibrate.early_stop:
        def vector_now():
            return _step_vector(trainable, snapshot, cfg, method.sign, regularizers)

        early = EarlyStop(trainable, snapshot, fs, tokenizer, cfg, cfg.seed + step, method.sign, vector_now)

    stats = finetune(
        trainable, method, fs, tokenizer.pad_token_id, lr=cfg.train.lr, epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
        max_grad_norm=cfg.train.max_grad_norm, saliency_k=cfg.saliency_k,
        saliency_density=cfg.saliency_density, seed=cfg.seed + step, reference=reference,
        progress=progress and procs.is_main, on_step=on_step, share_prompts=cfg.train.share_prompts,
        procs=procs, windows_per_backward=cfg.train.windows_per_backward,
        tokens_per_backward=cfg.train.tokens_per_backward, on_epoch=early,
    )
    stats.pop("masker")
    for r in regularizers:
        r.finish()
    alpha, calibration = cfg.alpha, None
    with procs.full_parameters(stats.pop("model")) as trained:  # a collective under FSDP
        vector = _step_vector(trained, snapshot, cfg, method.sign, regularizers) if procs.is_main else None
        if procs.is_main and cfg.calibrate.enabled:
            calibration = calibrate_step(trained, vector, snapshot, fs, tokenizer, cfg, cfg.seed + step,
                                         method.sign)
            alpha = calibration["alpha"]
    if not procs.is_main:  # every process holds the same weights; one writes them
        procs.barrier()
        return run.step_record(step)

    metadata = {
        "step": step, "books": fs.books, "method": cfg.method, "alpha": alpha,
        "sign": method.sign, "finetune": cfg.train.finetune,
        "base_model_sha256": run.record["base_model_sha256"],
    }
    with atomic_dir(run.step_dir(step), overwrite=True) as tmp:
        vector.save(tmp / VECTOR, metadata)
        atomic_write_json(tmp / "step.json", {**metadata, "train": stats})
    entry = {
        **metadata,
        "n_windows": len(fs.learn),
        "precision": _precision(trainable),
        "hyperparameters": {"lr": cfg.train.lr, "epochs": cfg.train.epochs,
                            "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
                            "epsilon": cfg.epsilon if method.uses_random_labels else 0.0,
                            "k_random": cfg.k_random, "saliency": method.saliency_mode,
                            "saliency_k": cfg.saliency_k, "seed": cfg.seed + step},
        "artifacts": {VECTOR: {"path": f"step_{step}/{VECTOR}",
                               "sha256": sha256_file(run.vector_path(step)),
                               "bytes": run.vector_path(step).stat().st_size}},
        "timings": {"load_seconds": round(t_load, 3), "train_seconds": stats["seconds"],
                    "total_seconds": round(time.perf_counter() - t0, 3)},
        "final_loss": stats["losses"][-1] if stats["losses"] else None,
    }
    if regularizers:
        entry["regularizers"] = {r.name: r.record() for r in regularizers}
    if calibration is not None:
        entry["calibration"] = calibration
    if early is not None:
        entry["early_stop"] = {**early.record(), "epochs_run": early.stopped_at or cfg.train.epochs}
    run.record_step(step, entry)  # last: the step now counts as complete
    procs.barrier()
    return entry


def _precision(model) -> dict[str, str]:
    """What the step trained in: the weights' dtype, the forward's, and how the stack was held."""
    weights = next(model.parameters()).dtype  # the embedding: base weights, never a LoRA factor
    compute = getattr(model, "ssu_compute_dtype", weights)
    stack = "adapter" if STACK_ADAPTER in getattr(model, "peft_config", {}) else "merged"
    return {"weights": str(weights).removeprefix("torch."), "compute": str(compute).removeprefix("torch."),
            "stack": stack}


def _prepare_trainable(model, cfg: RunConfig):
    """Wrap with LoRA (beside the frozen stack adapter, if any), or snapshot for a full fine-tune."""
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
            _checkpointing(model, cfg)
            return model, None
        except ValueError as e:
            raise SSUError(f"cannot apply LoRA: {str(e).splitlines()[0]}") from e
    # named_parameters() lists a tied tensor (embeddings / LM head) once; a state_dict
    # would list it under both names and the delta would be applied twice. The snapshot
    # stays in host memory; the vector is computed on the weights' device, tensor by tensor.
    snapshot = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.named_parameters()}
    model.requires_grad_(True)
    _checkpointing(model, cfg)
    return model, snapshot


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


def _step_vector(model, snapshot, cfg: RunConfig, sign: int, regularizers):
    """The step's vector as it is calibrated and stored: the change, times the method's sign,
    through every regularizer's :meth:`vector` (also what early stop tries after each epoch)."""
    vector = _extract_vector(model, snapshot, cfg) * float(sign)
    for r in regularizers:
        vector = r.vector(vector, model)
    return vector


def _extract_vector(model, snapshot, cfg: RunConfig):
    if cfg.train.finetune == "lora":
        return LoraTaskVector.from_peft_model(model, STEP_ADAPTER)
    return TaskVector.from_state_dicts(dict(model.named_parameters()), snapshot)
