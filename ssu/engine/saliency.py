"""Gradient-saliency masks (SalUn / SSU): update only the weights with large gradients.

At an optimizer step the threshold γ = mean(|g|) + k·std(|g|) is taken over every
entry of every trainable gradient (k = 1 in SSU), the mask is m = 1[|g| ≥ γ] and
the gradient is replaced by m ⊙ g in place, before ``optimizer.step()``. Only one
backward pass is involved. (The public SSU code masks after a first backward and
then runs a second one, so its effective gradient is g ⊙ (1 + m) and every weight
still moves; that is deliberately not reproduced.)

Memory: ssu must fine-tune 7-8B models, where one bool per weight is another 8 GB
and a float32 copy of the gradient 32 GB. So statistics are accumulated chunk by
chunk (≤ 2**24 entries) in float64 and nothing is concatenated, and the per-step
mask (mode ``"step"``) is never materialised: each chunk of the gradient is
multiplied by its own chunk of the mask, which is dropped at once. Nothing
full-size outlives a call except in mode ``"fixed"`` (SalUn), whose first mask is
reused at every step by definition and is therefore kept as one bool per entry -- unless the
masker is given the AdamW optimizer it runs before (``optimizer=``, as the fine-tune does):
then the first mask is applied like a step mask and kept nowhere, and later calls read it
back from AdamW's state, chunk by chunk (:func:`_moved_in_place`), for no memory at all.
With AdamW (weight_decay = 0) an entry whose gradient was never selected keeps
zero moments and therefore never moves; which entries those are is not recorded
(that would be a full-size union of masks), only per-parameter counts of the last
call's selection.

Sharded gradients (FSDP): each process holds a shard of every gradient. A
``shards`` object (:class:`ssu.engine.distributed.Processes`) then merges the
statistics over processes -- each process's (count, mean, M2), merged in rank order
with the same formula, or the summed histograms of the radix select -- so every
process gets the threshold of the whole gradient and masks its own shard with it.
Never over a concatenation: the shards stay where they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

MODES = ("step", "fixed", "none")
CHUNK = 1 << 24  # entries per reduction: bounds temporaries even for embedding matrices


def _abs(g: Tensor) -> Tensor:
    # Half-precision gradients are compared in float32; float32/float64 stay as they are.
    a = g.detach().abs()
    return a.float() if a.dtype in (torch.float16, torch.bfloat16) else a


def chunk_views(g: Tensor) -> list[Tensor]:
    """Views of ``g`` (writable in place) of at most :data:`CHUNK` entries, covering it
    once, so an elementwise pass over them holds one chunk's temporaries at a time.
    A non-contiguous ``g`` cannot be flattened without a copy: it is cut into blocks of
    rows, or row by row (recursively) when one row is longer than a chunk."""
    if g.is_contiguous():
        return list(g.view(-1).split(CHUNK))
    if g.dim() == 1:
        return list(g.split(CHUNK))
    row = g[0].numel()
    if row > CHUNK:
        return [c for r in g.unbind(0) for c in chunk_views(r)]
    return list(g.split(max(1, CHUNK // max(row, 1))))


def local(g: Tensor) -> Tensor:
    """This process's part of ``g``: the local shard of an FSDP2 DTensor, else ``g`` itself
    (FSDP1 already exposes local views); writes to it reach the gradient."""
    return g.to_local() if hasattr(g, "to_local") else g


def _chunks(tensors: Iterable[Tensor]) -> Iterable[Tensor]:
    # Flat chunks; a non-contiguous tensor is copied one chunk at a time, never whole.
    for t in tensors:
        yield from (c.reshape(-1) for c in chunk_views(t.detach()))


def _merge(n: float, mean: float, m2: float, nb: float, mb: float, m2b: float) -> tuple[float, float, float]:
    """Chan's parallel merge of two (count, mean, sum of squared deviations) summaries."""
    delta, tot = mb - mean, n + nb
    return tot, mean + delta * nb / tot, m2 + m2b + delta * delta * n * nb / tot


def saliency_threshold(tensors: Iterable[Tensor], k: float = 1.0, shards=None) -> float:
    """γ = mean(|g|) + k·std(|g|) over all entries of all ``tensors``.

    The standard deviation is the population one (ddof = 0), as in the SSU
    reference (``torch.std(..., unbiased=False)`` on the concatenation). Per chunk
    the count, mean and sum of squared deviations are computed in float64 and merged
    with Chan's parallel formula, which avoids the cancellation of the naive
    E[x²] − E[x]² when the spread is small relative to the mean.

    With ``shards``, ``tensors`` are this process's shards and the summaries of
    every process are merged in rank order (the same on every process).

    Raises ValueError when there are no entries or the result is not finite.
    """
    n, mean, m2 = 0, 0.0, 0.0
    for chunk in _chunks(tensors):
        a = _abs(chunk)
        nb = a.numel()
        if nb == 0:
            continue
        mb = float(a.sum(dtype=torch.float64)) / nb
        m2b = float(((a.double() - mb) ** 2).sum())
        n, mean, m2 = _merge(n, mean, m2, nb, mb, m2b)
    if shards is not None:
        parts = shards.gather(torch.tensor([n, mean, m2], dtype=torch.float64, device=shards.device))
        n, mean, m2 = 0, 0.0, 0.0
        for nb, mb, m2b in parts.tolist():
            if nb:
                n, mean, m2 = _merge(n, mean, m2, nb, mb, m2b)
    if n == 0:
        raise ValueError("saliency_threshold: no gradient entries")
    gamma = mean + k * math.sqrt(max(m2 / n, 0.0))
    if not math.isfinite(gamma):
        raise ValueError(f"saliency_threshold: non-finite threshold {gamma} (NaN/inf gradients?)")
    return gamma


def _hist16(tensors: list[Tensor], prefix: int | None, shards=None) -> Tensor:
    """Histogram of one 16-bit half of |g|'s float32 bit pattern, over all tensors.

    ``prefix=None``: the high 16 bits of every entry. Otherwise: the low 16 bits of
    the entries whose high 16 bits equal ``prefix``.
    """
    counts = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in _chunks(tensors):
        bits = _abs(chunk).float().view(torch.int32)
        if prefix is None:
            half = bits >> 16
        else:
            half = bits[(bits >> 16) == prefix] & 0xFFFF
        counts += torch.bincount(half.long(), minlength=1 << 16).cpu()
    return counts if shards is None else shards.sum(counts.to(shards.device)).cpu()


def _bucket_of_kth_largest(counts: Tensor, k: int) -> tuple[int, int]:
    """(bucket holding the k-th largest entry, how many entries lie in higher buckets)."""
    above = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])  # above[b] = #entries in buckets ≥ b
    b = int(torch.nonzero(above >= k).max())
    return b, int(above[b] - counts[b])


def topk_threshold(tensors: Iterable[Tensor], density: float, shards=None) -> float:
    """The k-th largest |g| over all entries, with k = max(1, round(density · N)).

    Exact (not approximate): non-negative float32 values sort like their bit
    patterns, so a two-pass radix select (16 bits per pass, one histogram per pass,
    no concatenation) finds the k-th largest value. Selecting ``|g| >= threshold``
    then keeps exactly k entries plus any further entries tied with the k-th
    (exactly like ``torch.kthvalue`` on the concatenation). Values are compared in
    float32 (float64 gradients are rounded, which may create ties). With ``shards``
    the count and both histograms are summed over processes.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    tensors = [t for t in tensors if t.numel()]
    n = sum(t.numel() for t in tensors)
    if shards is not None:
        n = int(shards.sum(torch.tensor(n, dtype=torch.int64, device=shards.device)))
    if n == 0:
        raise ValueError("topk_threshold: no gradient entries")
    k = min(n, max(1, round(density * n)))
    hi, above = _bucket_of_kth_largest(_hist16(tensors, None, shards), k)
    lo, _ = _bucket_of_kth_largest(_hist16(tensors, hi, shards), k - above)
    value = torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32).item()
    if not math.isfinite(value):
        raise ValueError(f"topk_threshold: non-finite threshold {value} (NaN/inf gradients?)")
    return value


def _with_grads(params: Iterable[tuple[str, nn.Parameter]]) -> list[tuple[str, Tensor]]:
    return [(name, local(p.grad)) for name, p in params if p.grad is not None]


def compute_masks(params: Iterable[tuple[str, nn.Parameter]], k: float = 1.0,
                  density: float | None = None) -> dict[str, Tensor]:
    """{name: |grad| ≥ γ} for every parameter that has a gradient.

    γ is :func:`saliency_threshold` (mean + k·std) or, when ``density`` is given,
    :func:`topk_threshold`; both over all parameters with a gradient together.
    Parameters whose ``.grad`` is None (frozen, or unused this step) get no mask:
    the optimizer skips them, so they cannot move anyway.
    """
    return _masks(_with_grads(params), k, density)[0]


def _threshold(grads: list[tuple[str, Tensor]], k: float, density: float | None, shards=None) -> float:
    if not grads:
        raise ValueError("compute_masks: no parameter has a gradient (call after backward)")
    gs = (g for _, g in grads)
    return topk_threshold(gs, density, shards) if density is not None else saliency_threshold(gs, k, shards)


def _masks(grads: list[tuple[str, Tensor]], k: float, density: float | None) -> tuple[dict[str, Tensor], float]:
    gamma = _threshold(grads, k, density)
    return {name: _abs(g) >= gamma for name, g in grads}, gamma


def apply_masks(params: Iterable[tuple[str, nn.Parameter]], masks: dict[str, Tensor]) -> None:
    """``grad.mul_(mask)`` in place: masked-out entries become exactly zero.

    Every parameter with a gradient needs a mask, and every mask must name a given
    parameter (ValueError otherwise). A mask whose parameter has no gradient this
    step is left unused.
    """
    params = list(params)
    unknown = set(masks) - {name for name, _ in params}
    if unknown:
        raise ValueError(f"masks for unknown parameters: {sorted(unknown)[:5]}")
    grads = _with_grads(params)
    missing = [name for name, _ in grads if name not in masks]
    if missing:
        raise ValueError(f"parameters with a gradient but no mask: {missing[:5]}")
    with torch.no_grad():
        for name, g in grads:
            if masks[name].shape != g.shape:
                raise ValueError(f"{name}: mask shape {tuple(masks[name].shape)} != grad {tuple(g.shape)}")
            g.mul_(masks[name])


def mask_in_place(grads: list[tuple[str, Tensor]], gamma: float) -> dict[str, int]:
    """``g.mul_(|g| ≥ γ)`` chunk by chunk for every gradient; {name: selected entries}.

    Bit-identical to multiplying by the whole mask at once (the product is
    elementwise), while at most one chunk's mask exists at a time. The counts stay on
    the device until every kernel is queued, so the host waits once, not per chunk.
    """
    counts = []
    with torch.no_grad():
        for _, g in grads:
            n = torch.zeros((), dtype=torch.int64, device=g.device)
            for c in chunk_views(g):
                keep = _abs(c) >= gamma
                n += keep.sum()
                c.mul_(keep)
            counts.append(n)
    return {name: int(n) for (name, _), n in zip(grads, counts)}


def _moved_in_place(named: list[tuple[str, nn.Parameter]], state) -> dict[str, int]:
    """Mask each gradient by the entries AdamW has moved: ``exp_avg != 0 or exp_avg_sq != 0``.

    With weight decay off, an entry whose gradient was masked to zero at the first step keeps
    both moments at exactly zero and never moves; an entry selected then has a non-zero
    gradient (|g| ≥ γ > 0), so at least one moment is non-zero from then on: the second is a
    sum of squares and never cancels, the first survives the square's underflow (float16).
    So the moved set *is* the first mask, read from state the optimizer holds anyway.
    """
    counts = {}
    with torch.no_grad():
        for name, p in named:
            if p.grad is None:
                continue
            st = state[p]
            if "exp_avg" not in st or "exp_avg_sq" not in st:
                raise ValueError(f"saliency mode 'fixed' from optimizer state: {name} has no Adam moments")
            n = torch.zeros((), dtype=torch.int64, device=p.grad.device)
            for g, m, v in zip(chunk_views(p.grad), chunk_views(st["exp_avg"]), chunk_views(st["exp_avg_sq"])):
                keep = (m != 0) | (v != 0)
                n += keep.sum()
                g.mul_(keep)
            counts[name] = n
    return {name: int(n) for name, n in counts.items()}


class SaliencyMasker:
    """Masks gradients once per optimizer step; call after backward, before ``optimizer.step()``.

    Modes: ``"step"`` recomputes the threshold from the current (accumulated)
    gradients at every call and masks in place chunk by chunk -- the SSU default;
    ``"fixed"`` computes the mask at the first call and reuses it (SalUn): the one
    mode that holds a full-size mask (``masks``, one bool per entry) between calls;
    ``"none"`` leaves gradients untouched and keeps nothing. After a call,
    ``threshold`` is its γ and ``selected`` its {parameter name: selected entries}.
    ``optimizer``: the AdamW (weight decay 0) that steps after every call; in mode
    ``"fixed"`` the first mask is then read back from its moments instead of kept.
    """

    def __init__(self, mode: str = "step", k: float = 1.0, density: float | None = None, shards=None,
                 optimizer=None):
        if mode not in MODES:
            raise ValueError(f"saliency mode must be one of {MODES}, got {mode!r}")
        if density is not None and not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if shards is not None and mode == "fixed":
            raise ValueError("saliency mode 'fixed' keeps whole masks and cannot run on sharded gradients")
        self.mode, self.k, self.density, self.shards = mode, k, density, shards
        self.optimizer = optimizer
        self.masks: dict[str, Tensor] | None = None  # mode "fixed" only
        self.threshold: float | None = None
        self.selected: dict[str, int] = {}
        self.calls = 0

    def release(self) -> None:
        """Let go of the optimizer once its steps are done: mode ``fixed`` reads its mask from the
        optimizer's moments, which must not outlive the fine-tune (8 bytes per weight)."""
        self.optimizer = None

    def __call__(self, named_params: Iterable[tuple[str, nn.Parameter]]) -> dict[str, Any]:
        """Mask the gradients in place; returns {} for ``"none"``, else statistics:
        ``threshold``, ``selected`` and ``total`` entries, ``fraction`` = selected/total.
        """
        named_params = list(named_params)
        self.calls += 1
        if self.mode == "none":
            return {}
        if self.mode == "step":
            grads = _with_grads(named_params)
            self.threshold = _threshold(grads, self.k, self.density, self.shards)
            self.selected = mask_in_place(grads, self.threshold)
            total = sum(g.numel() for _, g in grads)
            if self.shards is not None:  # this process's counts are of its shards
                both = self.shards.sum(torch.tensor([sum(self.selected.values()), total], device=self.shards.device))
                selected, total = (int(x) for x in both.tolist())
                return {"threshold": self.threshold, "selected": selected, "total": total,
                        "fraction": selected / total if total else 0.0}
        elif self.optimizer is not None:  # fixed, its mask read back from AdamW's moments after the first call
            if self.calls == 1:
                grads = _with_grads(named_params)
                self.threshold = _threshold(grads, self.k, self.density)
                self.selected = mask_in_place(grads, self.threshold)
            else:
                self.selected = _moved_in_place(named_params, self.optimizer.state)
            total = sum(p.grad.numel() for _, p in named_params if p.grad is not None)
        else:
            if self.masks is None:
                self.masks, self.threshold = _masks(_with_grads(named_params), self.k, self.density)
                self.selected = {name: int(m.sum()) for name, m in self.masks.items()}
            apply_masks(named_params, self.masks)
            total = sum(m.numel() for m in self.masks.values())
        selected = sum(self.selected.values())
        return {"threshold": self.threshold, "selected": selected, "total": total,
                "fraction": selected / total if total else 0.0}
