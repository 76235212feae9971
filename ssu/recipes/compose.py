"""Composition: θ_t = θ_0 + Σ_{s≤t} α_s·v_s from a run's stack, in memory or as a model directory.

:func:`load_composed` builds the model that steps train on and evaluation measures,
exact to the vectors in every dtype (see :mod:`ssu.engine.precision` for how half-precision
runs keep the vectors unrounded). The stack itself (:class:`ssu.vectors.VectorStack`)
knows nothing of run directories; this recipe reads one. :func:`compose_to_dir` (``ssu compose``) exports the
composed weights as a standard Hugging Face model directory: float32 by default
(exact), or rounded to a half dtype for deployment, with a per-step report of how much
of each vector the rounding kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssu.engine.precision import attach_lora_stack, autocast_forward, is_half
from ssu.errors import SSUError
from ssu.io import atomic_dir, atomic_write_json
from ssu.models.loading import DTYPES, SSU_MODEL_CARD, load_model, load_tokenizer, resolve_device, resolve_dtype
from ssu.recipes.run_dir import RESULTS, RunDir
from ssu.vectors.io import load_vector
from ssu.vectors.stack import StackEntry, VectorStack


def stack_of(run: RunDir) -> VectorStack:
    """The completed steps' vectors, in step order, each at its α as the stack applies it
    now (recorded by the step, or set since by ``ssu stack --reweight``)."""
    steps = run.manifest["steps"]
    alphas = run.effective_alphas()
    entries = [
        StackEntry(step=int(s), path=run.vector_path(int(s)), alpha=alphas[int(s)], metadata=e)
        for s, e in sorted(steps.items(), key=lambda kv: int(kv[0]))
    ]
    return VectorStack(entries)


def reweight(run_dir, step: int, alpha: float, note: str | None = None) -> dict:
    """Set step ``step``'s α in the stack (0 undoes the step) and record it in the log.

    Every later model changes with it, so the evaluation rows and generations of steps
    >= ``step`` are dropped (re-run ``ssu eval``); the vectors stay as they are.
    """
    import math
    from datetime import datetime, timezone

    from ssu.io import atomic_write_jsonl, read_jsonl

    run = RunDir(run_dir)
    alphas = run.effective_alphas()
    if step not in alphas:
        raise SSUError(f"step {step} is not complete in {run.path}")
    if not math.isfinite(alpha):
        raise SSUError(f"alpha must be finite, got {alpha}")
    event = {"kind": "reweight", "step": step, "alpha": float(alpha), "previous_alpha": alphas[step],
             "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # α = 0: the step undone
    if note:
        event["note"] = note
    results = run.path / RESULTS
    if results.is_file():
        atomic_write_jsonl(results, [r for r in read_jsonl(results) if r["step"] < step])
    for t in alphas:
        if t >= step:
            for name in ("generations.jsonl", "probes.jsonl"):
                (run.step_dir(t) / name).unlink(missing_ok=True)
    return run.record_event(event)


def _verified_stack(run: RunDir, upto: int | None) -> VectorStack:
    stack = stack_of(run)
    for entry in stack.entries:
        if upto is None or entry.step <= upto:
            run.verify_artifacts(entry.step)
    return stack


def load_composed(run: RunDir, upto: int | None = None, alphas: dict[int, float] | None = None,
                  device=None):
    """θ = base + Σ_t α_t·v_t for completed steps t ≤ ``upto``, in the run's precision.

    float32 runs get composed float32 weights. Half-precision runs get either the
    half-precision base with the LoRA stack as a frozen float32 adapter (LoRA runs) or
    float32 master weights computing under autocast (full fine-tunes).
    """
    cfg = run.config
    dev = resolve_device(device or cfg.device) if isinstance(device or cfg.device, str) else device
    dtype = resolve_dtype(cfg.dtype, dev)
    stack = _verified_stack(run, upto)
    if not is_half(dtype):
        model = load_model(cfg.model, dev, cfg.dtype, cfg.trust_remote_code)
        return stack.compose_into(model, upto=upto, alphas=alphas)
    applied = {s: a for s, a in stack.effective_alphas(upto, alphas).items() if a != 0.0}
    if cfg.train.finetune == "lora" and all(stack.entries[s - 1].metadata.get("finetune") == "lora" for s in applied):
        model = load_model(cfg.model, dev, cfg.dtype, cfg.trust_remote_code)
        if not applied:
            return model
        lora = sum(a * load_vector(stack.entries[s - 1].path)[0] for s, a in applied.items())
        return attach_lora_stack(model, lora)
    model = load_model(cfg.model, dev, "float32", cfg.trust_remote_code)
    stack.compose_into(model, upto=upto, alphas=alphas)
    return autocast_forward(model, dtype)


def compose_to_dir(run_dir, out_dir, upto: int | None = None, alphas: dict[int, float] | None = None,
                   overwrite: bool = False, dtype: str = "float32") -> tuple[list[int], dict[int, dict]]:
    """Write θ = base + Σ_{t≤upto} α_t·v_t in ``dtype``; return the steps applied and, for a
    half ``dtype``, per step what the rounding kept of α_t·v_t (else ``{}``)."""
    run = RunDir(run_dir)
    done = run.completed_steps()
    if upto is not None and upto > (done[-1] if done else 0):
        raise SSUError(f"--upto {upto} but only steps {done or 'none'} are complete")
    unknown = sorted(set(alphas or {}) - set(done))
    if unknown:
        raise SSUError(f"--alpha names steps that are not complete: {unknown}")
    if dtype not in DTYPES:
        raise SSUError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise SSUError(f"{out_dir} already exists (use --overwrite to replace it)")
    cfg = run.config
    model, rounding = composed_float32(run, upto, alphas, DTYPES[dtype])
    model = model.to(DTYPES[dtype])
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    applied = [s for s in done if upto is None or s <= upto]
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = Path(cfg.model) / SSU_MODEL_CARD
        if card.is_file():
            (tmp / SSU_MODEL_CARD).write_bytes(card.read_bytes())
        atomic_write_json(tmp / "ssu_compose.json", {
            "run": str(run.path.resolve()), "steps": applied, "dtype": dtype,
            "alphas": {str(s): (alphas or {}).get(s, run.step_record(s)["alpha"]) for s in applied},
            "rounding": {str(s): r for s, r in rounding.items()},
        })
    return applied, rounding


def composed_float32(run: RunDir, upto: int | None = None, alphas: dict[int, float] | None = None,
                     rounding: torch.dtype | None = None):
    """The composed model in float32 weights (exact) and, when ``rounding`` is a half dtype,
    the per-step report of what rounding to it would keep."""
    cfg = run.config
    model = load_model(cfg.model, cfg.device, "float32", cfg.trust_remote_code)
    stack = _verified_stack(run, upto)
    if rounding is not None and is_half(rounding):
        return model, stack.rounding_report(model, rounding, upto=upto, alphas=alphas)
    stack.compose_into(model, upto=upto, alphas=alphas)
    return model, {}
