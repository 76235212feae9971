"""Put the model a step trained at θ_{t−1} + α·v, exactly, and back (calibration, early stop).

A LoRA step changes no weight: its adapter's scaling becomes sign·α times its own, so
:meth:`AlphaView.restore` is exact. A full fine-tune sets every trained weight to
θ_{t−1} + α·v in its (float32) dtype from the pre-step snapshot; with ``keep_trained``
the trained weights are copied first (one more copy of the trainable weights) so
:meth:`restore` gives them back bit for bit -- θ_{t−1} + (θ − θ_{t−1}) is not θ in
floating point. Trying an α adds no copy of the model.
"""

from __future__ import annotations

import torch

from ssu.engine.precision import STEP_ADAPTER


class AlphaView:
    """``sign`` is the method's (v = sign·Δ); ``snapshot`` is None for a LoRA step."""

    def __init__(self, model, vector, snapshot, sign: int = -1, keep_trained: bool = False):
        self.model, self.vector, self.snapshot, self.sign = model, vector, snapshot, sign
        if snapshot is None:
            from peft.tuners.lora import LoraLayer

            base = model.get_base_model()
            self.layers = [m for m in base.modules() if isinstance(m, LoraLayer) and STEP_ADAPTER in m.scaling]
            self.own = [m.scaling[STEP_ADAPTER] for m in self.layers]
        else:
            self.params = dict(model.named_parameters())
            self.trained = ({k: self.params[k].detach().clone() for k in vector.keys()} if keep_trained else None)

    def apply(self, a: float) -> None:
        if self.snapshot is None:
            for m, s in zip(self.layers, self.own):
                m.scaling[STEP_ADAPTER] = s * self.sign * a
            return
        with torch.no_grad():
            for k in self.vector.keys():
                p = self.params[k]
                p.copy_(self.snapshot[k].to(p.device) + a * self.vector[k].to(p.device))

    def restore(self) -> None:
        if self.snapshot is None:
            for m, s in zip(self.layers, self.own):
                m.scaling[STEP_ADAPTER] = s
            return
        if self.trained is None:
            raise RuntimeError("AlphaView(keep_trained=False) cannot restore the trained weights")
        with torch.no_grad():
            for k, t in self.trained.items():
                self.params[k].copy_(t)
