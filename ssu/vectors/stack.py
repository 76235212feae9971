"""The stack: an ordered list of stored vectors, one per time step.

Step t stores v_t — for SSU the negated task vector −τ_t — on disk. The model after
step T is θ_T = θ_0 + Σ_{t≤T} α_t·v_t. Keeping the stack (rather than baking each
step into a saved model, as the public reference does) lets any point be
recomposed, a step be re-weighted (``alphas``) or removed (α_t = 0), and each step
be inspected (``describe``). Vectors are loaded from disk one at a time, so memory
holds the target plus a single vector whatever the stack's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssu.vectors.io import load_vector
from ssu.vectors.task_vector import RoundingReport, Target


@dataclass
class StackEntry:
    """Step ``step`` adds ``alpha`` × the vector stored at ``path``.

    ``metadata`` is the step's record (e.g. its manifest entry); ``"books"`` is read
    from it for :meth:`VectorStack.describe`, falling back to the vector file's own.
    """

    step: int
    path: Path
    alpha: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.alpha = float(self.alpha)


class VectorStack:
    """Entries for steps 1..T, contiguous and in order (else ValueError)."""

    def __init__(self, entries: list[StackEntry]):
        entries = list(entries)
        steps = [e.step for e in entries]
        if steps != list(range(1, len(entries) + 1)):
            raise ValueError(f"stack steps must be 1..T in order without gaps, got {steps}")
        self._entries = tuple(entries)

    @property
    def entries(self) -> tuple[StackEntry, ...]:
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[StackEntry]:
        return iter(self._entries)

    def effective_alphas(self, upto: int | None = None, alphas: dict[int, float] | None = None) -> dict[int, float]:
        """{step: alpha} for the steps ≤ ``upto`` that ``compose_into`` would apply.

        ``upto`` defaults to T and must lie in 0..T; ``alphas`` overrides the entries'
        alphas and may only name steps 1..T (ValueError otherwise; overrides for
        steps beyond ``upto`` are valid but have nothing to act on).
        """
        upto = len(self) if upto is None else upto
        if isinstance(upto, bool) or not isinstance(upto, int) or not 0 <= upto <= len(self):
            raise ValueError(f"upto must be an integer in 0..{len(self)}, got {upto!r}")
        alphas = dict(alphas or {})
        unknown = sorted(s for s in alphas if s not in range(1, len(self) + 1))
        if unknown:
            raise ValueError(f"alphas name steps outside 1..{len(self)}: {unknown}")
        bad = {s: a for s, a in alphas.items() if not math.isfinite(float(a))}
        if bad:
            raise ValueError(f"alphas must be finite, got {bad}")
        return {e.step: float(alphas.get(e.step, e.alpha)) for e in self._entries if e.step <= upto}

    def compose_into(self, target: Target, upto: int | None = None,
                     alphas: dict[int, float] | None = None) -> Target:
        """Add Σ_{t≤upto} α_t·v_t to ``target`` (model or state dict) in place, in step order.

        ``upto=0`` leaves ``target`` untouched (the base, bit for bit). Each vector is
        loaded, applied and released before the next is read. An α_t of 0 adds exact
        zeros, so the result equals composing without step t. Exact to float32 only
        when ``target`` is float32: see :meth:`rounding_report` for half precision.
        """
        self._compose(target, upto, alphas, None)
        return target

    def rounding_report(self, target: Target, dtype: torch.dtype, upto: int | None = None,
                        alphas: dict[int, float] | None = None) -> dict[int, dict[str, float]]:
        """Compose into ``target`` (float32 weights) as :meth:`compose_into` does, and say per
        step how much of α_t·v_t would survive rounding the composed weights to ``dtype``
        (a half-precision export): ``{step: {"dtype", "rel_error", "unchanged"}}``."""
        return self._compose(target, upto, alphas, dtype)

    def _compose(self, target: Target, upto: int | None, alphas: dict[int, float] | None,
                 rounding: torch.dtype | None) -> dict[int, dict[str, float]]:
        reports = {}
        for step, alpha in self.effective_alphas(upto, alphas).items():
            vector, _ = load_vector(self._entries[step - 1].path)
            report = RoundingReport(rounding) if rounding is not None else None
            vector.apply_to(target, scale=alpha, report=report)
            if report is not None:
                reports[step] = report.summary()
            del vector
        return reports

    def describe(self) -> list[dict[str, Any]]:
        """One summary row per step: step, books, alpha, kind, norm, density, bytes (file size).

        ``norm`` and ``density`` are of the stored vector v_t, before α_t.
        """
        rows = []
        for e in self._entries:
            vector, meta = load_vector(e.path)
            books = e.metadata.get("books", meta.get("books", []))
            rows.append({
                "step": e.step,
                "books": [books] if isinstance(books, str) else list(books),
                "alpha": e.alpha,
                "kind": vector.kind,
                "norm": vector.norm(),
                "density": vector.density(),
                "bytes": e.path.stat().st_size,
            })
            del vector
        return rows
