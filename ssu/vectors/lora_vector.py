"""LoRA task vectors: the exact delta of a LoRA fine-tune, kept as factors.

A LoRA fine-tune changes each target weight by exactly scale·B@A (transposed for
GPT-2's Conv1D, ``fan_in_fan_out``), so storing A (r×in) and B (out×r) is exact and
orders of magnitude smaller than the dense delta. Negation and scaling touch only
the scale. Arithmetic glue, application and the file format (``"{name}::A"``,
``"{name}::B"``, ``scale``/``fan_in_fan_out`` under ``"targets"``) are shared with
:class:`ssu.vectors.task_vector.TaskVector`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ssu.errors import SSUError
from ssu.vectors.task_vector import RoundingReport, Target, TaskVector, _apply, _check_same_keys, _Vector


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA target: delta = scale · B @ A, transposed when ``fan_in_fan_out`` (Conv1D)."""

    A: Tensor  # r × in
    B: Tensor  # out × r
    scale: float
    fan_in_fan_out: bool

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"need B (out×r) and A (r×in); got B {tuple(self.B.shape)}, A {tuple(self.A.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        out, inp = self.B.shape[0], self.A.shape[1]
        return (inp, out) if self.fan_in_fan_out else (out, inp)

    def delta(self, extra: float = 1.0) -> Tensor:
        """Dense float32 delta times ``extra``, as peft's ``get_delta_weight``."""
        prod = self.B.float() @ self.A.float()
        return (prod.T if self.fan_in_fan_out else prod) * (self.scale * float(extra))

    def norm_sq(self) -> float:
        """‖scale·B@A‖_F² = scale²·Σ (BᵀB)∘(AAᵀ) in float64: r×r work, no dense delta."""
        a, b = self.A.double(), self.B.double()
        return max(float(((b.T @ b) * (a @ a.T)).sum()), 0.0) * self.scale**2


class LoraTaskVector(_Vector):
    """Exact LoRA delta per target weight, kept as factors.

    ``-v`` and ``c * v`` change only the scales (exact). ``a + b`` of two LoRA
    vectors concatenates ranks (A = [A₁; A₂], B = [s₁B₁ | s₂B₂], or the shared scale
    kept outside): exactly s₁B₁A₁ + s₂B₂A₂, still low-rank — peft's "cat". Summing
    A's and B's separately would add cross terms (peft issue #3004); never done.
    Adding a dense :class:`TaskVector` densifies and needs identical key sets.
    """

    kind = "lora"

    def __init__(self, records: dict[str, LoraFactors]):
        bad = [k for k, r in records.items() if not isinstance(r, LoraFactors)]
        if bad:
            raise ValueError(f"LoraTaskVector values must be LoraFactors: {bad[:5]}")
        super().__init__(records)

    @classmethod
    def from_peft_model(cls, peft_model: nn.Module, adapter_name: str = "default") -> LoraTaskVector:
        """Read ``adapter_name``'s factors from every LoRA layer, keyed by base weight name.

        Module names come from ``get_base_model()`` (peft's ``base_model.model.`` prefix
        stripped); ``{module}.base_layer.weight`` must exist and the key is
        ``{module}.weight`` — the name after ``merge_and_unload()``. Layers lacking the
        adapter are not its targets. DoRA/variants, lora_bias, merged adapters and
        conv layers raise SSUError (their delta is not scale·B@A on the weight).
        """
        from peft.tuners.lora import LoraLayer

        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        sd = base.state_dict()
        records: dict[str, LoraFactors] = {}
        for name, mod in base.named_modules():
            if not isinstance(mod, LoraLayer) or adapter_name not in mod.scaling:
                continue
            if adapter_name in getattr(mod, "lora_variant", {}) or getattr(mod, "lora_bias", {}).get(adapter_name):
                raise SSUError(f"{name}: LoRA variants (DoRA, ...) and lora_bias are not supported")
            if adapter_name in mod.merged_adapters:
                raise SSUError(f"{name}: adapter {adapter_name!r} is merged into the weight; unmerge first")
            base_key = f"{name}.base_layer.weight"
            if base_key not in sd:
                raise SSUError(f"{name}: {base_key} is not in the base model's state dict")
            if adapter_name in mod.lora_A:
                A, B, fifo = mod.lora_A[adapter_name].weight, mod.lora_B[adapter_name].weight, bool(mod.fan_in_fan_out)
            else:  # embedding LoRA: peft always transposes B@A
                A, B, fifo = mod.lora_embedding_A[adapter_name], mod.lora_embedding_B[adapter_name], True
            if A.dim() != 2 or B.dim() != 2:
                raise SSUError(f"{name}: only Linear, Conv1D and Embedding LoRA layers are supported")
            rec = LoraFactors(A.detach().to("cpu", torch.float32).clone(), B.detach().to("cpu", torch.float32).clone(),
                              float(mod.scaling[adapter_name]), fifo)
            if rec.shape != tuple(sd[base_key].shape):
                raise SSUError(f"{name}: LoRA delta shape {rec.shape} != base weight {tuple(sd[base_key].shape)}")
            records[f"{name}.weight"] = rec
        if not records:
            raise SSUError(f"no LoRA layer carries adapter {adapter_name!r}")
        return cls(records)

    def __add__(self, other: object) -> _Vector:
        if isinstance(other, TaskVector):
            return self.to_dense() + other
        if not isinstance(other, LoraTaskVector):
            return NotImplemented
        _check_same_keys(self._m, other._m, "LoraTaskVector addition")
        out = {}
        for k, a in self._m.items():
            b = other[k]
            if a.shape != b.shape or a.fan_in_fan_out != b.fan_in_fan_out:
                raise ValueError(f"{k}: LoRA targets disagree in shape or fan_in_fan_out")
            A = torch.cat([a.A.float(), b.A.float()])
            if a.scale == b.scale:  # keep the shared scale outside: B is not rounded
                out[k] = LoraFactors(A, torch.cat([a.B.float(), b.B.float()], 1), a.scale, a.fan_in_fan_out)
            else:
                out[k] = LoraFactors(A, torch.cat([a.B * a.scale, b.B * b.scale], 1).float(), 1.0, a.fan_in_fan_out)
        return LoraTaskVector(out)

    def __mul__(self, c: object) -> LoraTaskVector:
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        return LoraTaskVector({k: replace(r, scale=r.scale * float(c)) for k, r in self._m.items()})

    def to_dense(self) -> TaskVector:
        """Materialise every target's scale·B@A (float32) as a :class:`TaskVector`."""
        return TaskVector({k: r.delta() for k, r in self._m.items()})

    def apply_to(self, target: Target, scale: float = 1.0, report: RoundingReport | None = None) -> Target:
        """Add ``scale``·scale_t·B@A per target in place, one dense delta at a time."""
        return _apply(target, self.keys(), lambda n: self._m[n].delta(scale), report)

    def norm(self) -> float:
        """L2 norm of the dense delta, computed per target from the factors."""
        return math.sqrt(sum(r.norm_sq() for r in self._m.values()))

    def _tensors(self) -> Iterator[Tensor]:
        for r in self._m.values():
            yield r.A
            yield r.B

    def _payload(self) -> tuple[dict[str, Tensor], dict]:
        tensors: dict[str, Tensor] = {}
        for k, r in self._m.items():
            tensors[f"{k}::A"] = r.A.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{k}::B"] = r.B.detach().to("cpu", torch.float32).contiguous()
        targets = {k: {"scale": r.scale, "fan_in_fan_out": r.fan_in_fan_out} for k, r in self._m.items()}
        return tensors, {"targets": targets}

    @classmethod
    def _from_payload(cls, tensors: dict[str, Tensor], fmt: dict) -> LoraTaskVector:
        t = fmt["targets"]
        return cls({k: LoraFactors(tensors[f"{k}::A"], tensors[f"{k}::B"], float(t[k]["scale"]),
                                   bool(t[k]["fan_in_fan_out"])) for k in fmt["keys"]})


