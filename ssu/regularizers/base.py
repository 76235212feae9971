"""The regularizer interface, its registry (:data:`REGULARIZERS`), and what several share.

A regularizer is named in the run config's ``regularizers: [{name, args}, ...]`` and
takes its parameters from its own ``Args`` dataclass. It acts at fixed points of a
step, whatever the method:

- :meth:`Regularizer.prepare` before the fine-tune, at θ_{t−1} (compute a Fisher,
  register gradient hooks, encode its own rows);
- :meth:`Regularizer.loss` inside every backward, added to the method's loss
  (:class:`Regularized` wraps the method, so the one training loop is untouched);
- :meth:`Regularizer.finish` after the fine-tune (remove hooks);
- :meth:`Regularizer.vector` on the step's vector (sign applied) before it is calibrated
  and stored.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import torch

from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch
from ssu.errors import SSUError
from ssu.registry import Registry


class Regularizer:
    """Acts on one time step; subclasses register with ``@REGULARIZERS.register("name",
    description=...)``, declare ``Args`` and override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Args: ClassVar[type | None] = None
    needs_retain: ClassVar[bool] = False  # the step's forget set must carry retain windows
    needs_earlier: ClassVar[bool] = False  # ... and the windows of books removed at earlier steps
    needs_reference: ClassVar[bool] = False  # loss() compares against the frozen θ_{t−1}
    has_loss: ClassVar[bool] = False  # loss() adds a term to every backward
    fsdp: ClassVar[bool] = True  # works on FSDP shards

    def __init__(self, args: Any = None, *, sign: int = -1, seed: int = 0):
        self.args = args
        self.sign = sign  # the method's: stored vector = sign * (theta_ft - theta_prev)
        self.seed = seed  # the run's seed (a step's own is ``fs.seed``)

    def prepare(self, model, fs) -> None:
        """Before the fine-tune, at θ_{t−1} (``model`` is the trainable model)."""

    def loss(self, model, batch, reference) -> tuple[torch.Tensor, dict[str, float]]:
        """A term added to the method's loss on ``batch`` (one chunk of a micro-batch)."""
        raise NotImplementedError

    def finish(self) -> None:
        """After the fine-tune, before the vector is taken."""

    def vector(self, vector, model):
        """The step's vector (sign applied) -> the vector to calibrate and store. The vector's
        tensors are the step's own: a regularizer may scale them in place and return it."""
        return vector

    def record(self) -> dict:
        """What the manifest keeps about this regularizer's work in the step."""
        return {}


class Regularized:
    """A method whose loss gains its regularizers' terms; everything else is the method's.

    The loop reads ``needs_retain`` (retain rows inside each micro-batch) from the method
    itself: a regularizer draws its own rows, so a method that ignores retain windows is
    not handed any.
    """

    def __init__(self, method, regularizers: list[Regularizer]):
        self.method = method
        self.terms = [r for r in regularizers if r.has_loss]
        self.needs_reference = method.needs_reference or any(r.needs_reference for r in self.terms)

    def __getattr__(self, name):
        return getattr(self.method, name)

    def loss(self, model, batch, reference=None):
        loss, parts = self.method.loss(model, batch, reference)
        for r in self.terms:
            term, extra = r.loss(model, batch, reference)
            loss = loss + term
            parts = {**parts, **extra}
        return loss, parts


def chunk_share(batch) -> float:
    """This chunk's share of its micro-batch (forget windows in the chunk / in the micro-batch),
    so a term computed once per chunk adds up to once per micro-batch."""
    here = int((batch.group == LEARN).sum())
    return here / max(batch.rows_in(LEARN), 1)


def sample(rows: list, n: int, seed: int) -> list:
    """``n`` rows drawn without replacement with ``seed`` (all of them when fewer)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def draw_indices(n_rows: int, rng: random.Random, n: int | None, batch) -> list[int]:
    """Indices of ``n`` rows drawn with replacement for one chunk (``None``: as many as the
    chunk's forget windows) -- for a regularizer that keeps something per row (a cache)."""
    k = n or int((batch.group == LEARN).sum())
    return [rng.randrange(n_rows) for _ in range(max(k, 1))]


def draw_rows(rows: list, rng: random.Random, n: int | None, batch) -> list:
    """``n`` rows drawn with replacement for one chunk (``None``: as many as the chunk's forget
    windows), each as a learning row of its own batch."""
    return [(rows[i], LEARN) for i in draw_indices(len(rows), rng, n, batch)]


def step_retain_fisher(name: str, model, fs, windows: int, seed: int) -> tuple[dict, int]:
    """The retain Fisher of a full fine-tune's step at θ_{t−1}, from ``windows`` retain rows;
    one-line errors for a LoRA step or a layout without retain books.

    Taken once per (windows, seed) and step: ``fisher`` and ``retain-mask`` together would
    otherwise run the same backwards twice and hold two float32 copies (``fs.shared``,
    emptied by the step before training). Callers must not modify the tensors.
    """
    require_full(name, model)
    require_retain(name, fs)
    key = ("retain_fisher", windows, seed)
    if key not in fs.shared:
        rows = sample(fs.retain, windows, seed)
        fs.shared[key] = retain_fisher(model, rows, fs.pad_id), len(rows)
    return fs.shared[key]


def retain_fisher(model, rows, pad_id: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Empirical Fisher of the retain ``rows`` at the model's weights: per trainable weight,
    the mean over rows of g² (g: the gradient of one row's continuation NLL).

    One row per backward, so g is a single window's gradient (the *empirical* Fisher,
    not the squared mean gradient). No dropout: the Fisher of θ_{t−1} itself. Stored in
    ``dtype``: float32 (summed, then divided), or bfloat16 for ``protect`` -- each row's
    g²/N added in float32, one tensor at a time, and rounded once per row.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=dtype) for n, p in named}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scale = 1.0 / max(len(rows), 1)
    for e in rows:
        model.zero_grad(set_to_none=True)
        batch = make_batch([(e, LEARN)], pad_id).to(device)
        nll, mask = forward_nll(model, batch)
        group_mean_nll(nll, mask, batch, LEARN).backward()
        for n, p in named:
            if p.grad is None:
                continue
            g = p.grad.float()
            if dtype == torch.float32:
                fisher[n].add_(g.square())
            else:
                fisher[n].copy_(fisher[n].float().addcmul_(g, g, value=scale))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if dtype == torch.float32:
        for f in fisher.values():
            f.div_(max(len(rows), 1))
    return fisher


def require_retain(name: str, fs) -> None:
    if not fs.retain:
        raise SSUError(f"regularizer {name!r} needs retain books (retain/*.txt in the prepared data)")


def require_full(name: str, model) -> None:
    if hasattr(model, "peft_config"):
        raise SSUError(f"regularizer {name!r} needs train.finetune: full (it acts on each weight of the change)")


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer", "regularizers")
