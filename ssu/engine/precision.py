"""Precision: where the weights of θ_t live and in which dtype the model computes.

A realistic step vector (RMS 1e-6 .. 1e-5) lies far below bfloat16's resolution for
weights of size ~0.02 (one ulp there is ~1.2e-4): adding it into bf16 weights leaves
most entries unchanged and keeps about 1 % of a LoRA step. So ssu never rounds a vector
into half-precision weights. Per run (``dtype`` resolved on the run's device):

- **float32**: θ_t = θ_0 + Σ α_t·v_t in float32 weights (exact to float32).
- **half precision, LoRA steps**: the base stays in its half dtype and the whole stack is
  one frozen float32 peft adapter, :data:`STACK_ADAPTER` (the steps' factors
  concatenated, α_t and the LoRA scale folded into B), added in the forward pass:
  ``W x + (B A) x``. No vector entry is rounded; only activations are, as in any
  half-precision forward. A new step trains its own adapter on top of it.
- **half precision, full fine-tunes**: float32 weights composed exactly (master weights)
  and the forward under :func:`torch.autocast` in the half dtype -- mixed precision, which
  a full fine-tune needs anyway so AdamW's ~1e-5 updates are not rounded away. float16
  would also need loss scaling, which ssu does not do: :func:`check_supported` refuses it.

``ssu compose --dtype bfloat16`` still exports a rounded model for deployment and reports
what the rounding kept (``VectorStack.rounding_report``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from types import MethodType

import torch

from ssu.errors import SSUError

HALF = (torch.bfloat16, torch.float16)
STACK_ADAPTER = "ssu_stack"  # the frozen adapter carrying Σ α_t·v_t of earlier LoRA steps
STEP_ADAPTER = "default"  # the adapter a LoRA step trains


def is_half(dtype: torch.dtype) -> bool:
    return dtype in HALF


def check_supported(finetune: str, dtype: torch.dtype) -> None:
    """One-line refusal of combinations ssu cannot train correctly."""
    if finetune == "full" and dtype == torch.float16:
        raise SSUError("full fine-tunes in float16 need loss scaling, which ssu does not do; "
                       "use dtype bfloat16 (mixed precision, float32 master weights) or float32")


def autocast_forward(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Run ``model.forward`` under ``torch.autocast(dtype)`` while its weights stay float32.

    The same wrapping accelerate applies to a prepared model under mixed precision;
    ``generate`` calls ``self(...)`` and so computes in ``dtype`` too. Returns ``model``.
    """
    device_type = next(model.parameters()).device.type
    forward = model.forward.__func__ if hasattr(model.forward, "__func__") else model.forward
    model.forward = MethodType(torch.autocast(device_type, dtype=dtype)(forward), model)
    model.ssu_compute_dtype = dtype  # a record for the step's manifest entry
    return model


def attach_lora_stack(model: torch.nn.Module, stack) -> torch.nn.Module:
    """``model`` (half precision) plus the LoRA vector ``stack`` as a frozen float32 adapter.

    Every target gets rank r = the largest rank in ``stack`` (smaller ones padded with
    zero rows and columns, which add exactly nothing) and lora_alpha = r, so peft's
    scaling is 1 and B carries the vector's own scale. Returns the peft model.
    """
    from peft import LoraConfig, get_peft_model

    targets = {k.removesuffix(".weight"): f for k, f in stack._m.items()}
    rank = max(f.A.shape[0] for f in targets.values())
    cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(targets), bias="none",
                     init_lora_weights=False, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, cfg, adapter_name=STACK_ADAPTER)
    modules = dict(peft_model.get_base_model().named_modules())
    with torch.no_grad():
        for name, f in targets.items():
            layer = modules[name]
            if STACK_ADAPTER not in getattr(layer, "lora_A", {}):
                raise SSUError(f"{name}: the LoRA stack can only be attached to Linear/Conv1D layers")
            a, b = layer.lora_A[STACK_ADAPTER].weight, layer.lora_B[STACK_ADAPTER].weight
            if bool(layer.fan_in_fan_out) != f.fan_in_fan_out:
                raise SSUError(f"{name}: the stored vector and the layer disagree on fan_in_fan_out")
            r = f.A.shape[0]
            a.zero_()[:r].copy_(f.A)
            b.zero_()[:, :r].copy_(f.B.float() * f.scale)
    peft_model.requires_grad_(False)
    return peft_model


def add_step_adapter(peft_model, lora_config) -> None:
    """Add the trainable :data:`STEP_ADAPTER` beside the frozen stack; both act in the forward."""
    peft_model.add_adapter(STEP_ADAPTER, lora_config)
    _activate(peft_model, [STACK_ADAPTER, STEP_ADAPTER])


def _activate(peft_model, names: list[str]) -> None:
    """Make ``names`` the active adapters; only :data:`STEP_ADAPTER` (if active) trains."""
    peft_model.base_model.set_adapter(names, inference_mode=True)  # all frozen ...
    if STEP_ADAPTER in names:
        for n, p in peft_model.named_parameters():
            if f".{STEP_ADAPTER}." in n:  # ... but the step's own factors
                p.requires_grad_(True)


@contextmanager
def step_adapter_off(peft_model):
    """θ_{t−1} through the model under training: the step's adapter switched off."""
    names = list(peft_model.base_model.active_adapters)
    if names == [STEP_ADAPTER]:
        with peft_model.disable_adapter():
            yield
        return
    _activate(peft_model, [n for n in names if n != STEP_ADAPTER])
    try:
        yield
    finally:
        _activate(peft_model, names)


class ReferenceView(torch.nn.Module):
    """The frozen θ_{t−1} that NPO compares against, without a second copy of the model:
    the LoRA model being trained, forwarded with its step adapter off."""

    def __init__(self, peft_model):
        super().__init__()
        self.inner = peft_model

    def get_base_model(self):  # what ssu.engine.prefix inspects for the forward's arguments
        return self.inner.get_base_model()

    def forward(self, **kwargs):
        with torch.no_grad(), step_adapter_off(self.inner):
            return self.inner(**kwargs)
