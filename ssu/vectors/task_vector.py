"""Task vectors: parameter deltas with an arithmetic API, stored as safetensors.

A task vector τ = θ_ft − θ_base is what a fine-tune changed; SSU negates it (−τ)
to remove what the fine-tune learned and keeps one negated vector per time step.
:class:`TaskVector` holds dense float32 deltas; :class:`ssu.vectors.lora_vector.LoraTaskVector`
holds the exact delta of a LoRA fine-tune as factors. This module owns what both
share: arithmetic glue, applying deltas and the file format; ``ssu.vectors.io.load_vector``
reads either kind.

Both are value objects: operators return new vectors and never modify tensors in
place, so ``-v``, ``sum(vs)``, ``a + b - c`` and ``0.5 * v`` are safe. Mismatched
key sets raise :class:`ValueError` naming the keys; nothing is skipped silently.

File format: one ``.safetensors`` file, written atomically. Its header metadata
holds two JSON strings: ``"ssu"`` is the caller's metadata dict, ``"ssu_format"``
the layout ``{"kind": "dense"|"lora", "version": 1, "keys": [...], ...}``. A dense
tensor is written as ``"{name}::idx"`` (flat indices; int32 when numel < 2**31,
else int64) + ``"{name}::val"`` (float32), its shape under ``"sparse"``, exactly
when that takes fewer bytes (density < 0.5 with int32 indices); else as
``"{name}"``. An entry counts as stored when its bit pattern is not +0.0, so -0.0
and NaN survive and loading is bit-identical. LoRA files hold ``"{name}::A"``,
``"{name}::B"`` and per-target ``scale``/``fan_in_fan_out`` under ``"targets"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor, nn

from ssu.errors import SSUError
from ssu.io import atomic_write_bytes

FORMAT_VERSION = 1
META_KEY, FORMAT_KEY = "ssu", "ssu_format"
Target = Union[nn.Module, "dict[str, Tensor]"]


def _names(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_same_keys(a: Iterable[str], b: Iterable[str], what: str) -> None:
    a, b = set(a), set(b)
    if a != b:
        raise ValueError(f"{what}: key sets differ; only left: [{_names(a - b)}]; only right: [{_names(b - a)}]")


def _target_tensors(target: Target) -> dict[str, Tensor]:
    if isinstance(target, nn.Module):
        return {k: v.data for k, v in target.state_dict(keep_vars=True).items()}
    if isinstance(target, Mapping):
        return dict(target)
    raise TypeError(f"apply_to expects an nn.Module or a state dict, got {type(target).__name__}")


def _storage_id(name: str, t: Tensor) -> tuple:
    # Tied weights (GPT-2's lm_head / wte) are two keys over one storage: update once.
    if t.numel() == 0:
        return ("empty", name)
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _add_update_(t: Tensor, update: Tensor, name: str) -> None:
    """t += update, computed in float32 (float64 stays float64) and cast back to t's dtype."""
    if not t.is_floating_point():
        raise ValueError(f"{name}: target tensor has non-floating dtype {t.dtype}")
    if tuple(t.shape) != tuple(update.shape):
        raise ValueError(f"{name}: shape mismatch, target {tuple(t.shape)} vs delta {tuple(update.shape)}")
    work = torch.promote_types(t.dtype, torch.float32)
    update = update.to(device=t.device, dtype=work)
    if t.dtype == work:
        t.add_(update)
    else:
        t.copy_(t.to(work).add_(update))


class RoundingReport:
    """How much of an applied delta survives when the result is rounded to ``dtype``.

    Composition itself is exact (float32 weights); this measures what an export in a
    half dtype would keep of one step's α·v: with θ̂ = θ rounded to ``dtype``,
    Δ̂ = θ̂_after − θ̂_before versus the intended Δ = α·v, summed over the step's tensors.
    ``rel_error`` = ‖Δ̂ − Δ‖ / ‖Δ‖ (0 = kept exactly, ≈1 = lost) and ``unchanged`` = the
    fraction of non-zero Δ entries whose rounded weight did not move at all.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.err_sq = self.ref_sq = 0.0
        self.nonzero = self.unchanged = 0

    def add(self, before: Tensor, update: Tensor, after: Tensor) -> None:
        moved = after.to(self.dtype).float() - before.to(self.dtype).float()
        nz = update != 0
        self.err_sq += float(torch.linalg.vector_norm((moved - update).double()) ** 2)
        self.ref_sq += float(torch.linalg.vector_norm(update.double()) ** 2)
        self.nonzero += int(nz.sum())
        self.unchanged += int((nz & (moved == 0)).sum())

    def summary(self) -> dict[str, float]:
        return {"dtype": str(self.dtype).removeprefix("torch."),
                "rel_error": math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq else 0.0,
                "unchanged": self.unchanged / self.nonzero if self.nonzero else 0.0}


def _apply(target: Target, names: list[str], update_fn: Callable[[str], Tensor],
           report: RoundingReport | None = None) -> Target:
    """Add ``update_fn(name)`` to each named tensor of ``target`` in place, once per storage.

    ``report``: also measure what rounding the result to ``report.dtype`` would keep.
    """
    tensors = _target_tensors(target)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"target lacks {len(missing)} key(s) of the vector: [{_names(missing)}]")
    groups: dict[tuple, list[str]] = {}
    for n in names:
        groups.setdefault(_storage_id(n, tensors[n]), []).append(n)
    with torch.no_grad():
        for first, *others in groups.values():
            update = update_fn(first)
            for other in others:
                if not torch.equal(update_fn(other), update):
                    raise ValueError(f"tied keys {first} and {other} have different deltas")
            before = tensors[first].clone() if report is not None else None
            _add_update_(tensors[first], update, first)
            if report is not None:
                report.add(before, update.to(before.device, torch.float32), tensors[first])
    return target


def _read_header(path: str | Path) -> tuple[dict, dict]:
    """(format, metadata) from a vector file's header; SSUError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SSUError(f"vector file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        fmt, meta = json.loads(header[FORMAT_KEY]), json.loads(header[META_KEY])
    except (KeyError, ValueError, OSError, RuntimeError, SafetensorError) as e:
        raise SSUError(f"{path} is not a readable ssu vector file ({e})") from e
    if fmt.get("version") != FORMAT_VERSION or fmt.get("kind") not in ("dense", "lora"):
        raise SSUError(f"{path}: unsupported vector format {fmt.get('kind')!r} v{fmt.get('version')}")
    return fmt, meta


def _canonical_header(data: bytes) -> bytes:
    """``data`` with its safetensors header's ``__metadata__`` keys in sorted order.

    safetensors serialises the metadata from a Rust HashMap, whose order changes from
    one call to the next even within a process, so the same vector could be written
    as two different byte strings. Tensor offsets are relative to the end of the
    header, so rewriting the header (padded to 8 bytes, as safetensors does) is safe.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _sparse_pays(nnz: int, n: int) -> bool:
    return nnz * ((4 if n < 2**31 else 8) + 4) < n * 4


def _encode(name: str, d: Tensor, out: dict[str, Tensor], sparse: dict[str, list[int]]) -> None:
    """Store ``d`` densely or as (flat index, value) pairs, whichever takes fewer bytes."""
    flat = d.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    stored = flat.view(torch.int32) != 0  # every bit pattern except +0.0
    if _sparse_pays(int(stored.sum()), flat.numel()):
        idx = stored.nonzero().reshape(-1)
        out[f"{name}::idx"] = idx.to(torch.int32 if flat.numel() < 2**31 else torch.int64)
        out[f"{name}::val"] = flat[stored]
        sparse[name] = list(d.shape)
    else:
        out[name] = flat.reshape(d.shape)


def _decode(name: str, tensors: dict[str, Tensor], sparse: dict[str, list[int]]) -> Tensor:
    if name not in sparse:
        return tensors[name]
    flat = torch.zeros(math.prod(sparse[name]), dtype=torch.float32)
    flat[tensors[f"{name}::idx"].long()] = tensors[f"{name}::val"]
    return flat.reshape(sparse[name])


class _Vector:
    """Shared mapping view, arithmetic glue, statistics and file I/O of both vector kinds."""

    kind = ""

    def __init__(self, items: Mapping[str, Any]):
        bad = [k for k in items if "::" in k]
        if bad:
            raise ValueError(f"names may not contain '::' (reserved by the file format): [{_names(bad)}]")
        self._m = dict(items)

    def keys(self) -> list[str]:
        return list(self._m)

    def __getitem__(self, key: str) -> Any:
        return self._m[key]

    def __contains__(self, key: object) -> bool:
        return key in self._m

    def __len__(self) -> int:
        return len(self._m)

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} tensors, {self.numel()} stored entries)"

    def __radd__(self, other: object) -> Any:  # sum() starts from 0
        return self if isinstance(other, int) and not isinstance(other, bool) and other == 0 else self + other

    def __neg__(self) -> Any:
        return self * -1.0

    def __sub__(self, other: object) -> Any:
        return self + (-other) if isinstance(other, _Vector) else NotImplemented

    def __rmul__(self, c: object) -> Any:
        return self * c

    def _tensors(self) -> Iterator[Tensor]:
        raise NotImplementedError

    def numel(self) -> int:
        """Number of stored entries (deltas, or LoRA factors)."""
        return sum(t.numel() for t in self._tensors())

    def density(self) -> float:
        """Fraction of stored entries that are non-zero (0.0 when empty)."""
        n = self.numel()
        return sum(int(torch.count_nonzero(t)) for t in self._tensors()) / n if n else 0.0

    def _payload(self) -> tuple[dict[str, Tensor], dict]:
        raise NotImplementedError

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
        """Write atomically with ``metadata`` (JSON-serialisable) in the header; returns the sha256."""
        tensors, extra = self._payload()
        fmt = {"kind": self.kind, "version": FORMAT_VERSION, "keys": self.keys(), **extra}
        try:
            user = json.dumps(metadata or {}, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"vector metadata must be JSON-serialisable: {e}") from e
        data = st_save(tensors, metadata={META_KEY: user, FORMAT_KEY: json.dumps(fmt, sort_keys=True)})
        data = _canonical_header(data)
        atomic_write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def _from_payload(cls, tensors: dict[str, Tensor], fmt: dict) -> Any:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> tuple[Any, dict]:
        """Read a file written by :meth:`save`; returns (vector, metadata)."""
        fmt, meta = _read_header(path)
        if fmt["kind"] != cls.kind:
            raise SSUError(f"{path} holds a {fmt['kind']!r} vector, not {cls.kind!r}; use load_vector()")
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        try:
            return cls._from_payload(tensors, fmt), meta
        except KeyError as e:
            raise SSUError(f"{path}: entry {e} named in the header is missing") from e


class TaskVector(_Vector):
    """Mapping of state-dict key -> float32 delta tensor, with vector arithmetic.

    Tensors are held, not copied (float32 inputs share memory with the caller).
    """

    kind = "dense"

    def __init__(self, deltas: Mapping[str, Tensor]):
        bad = [k for k, v in deltas.items() if not v.is_floating_point()]
        if bad:
            raise ValueError(f"task vector deltas must be floating point: [{_names(bad)}]")
        super().__init__({k: v.detach().float() for k, v in deltas.items()})

    @classmethod
    def from_state_dicts(cls, finetuned: Mapping[str, Tensor], base: Mapping[str, Tensor],
                         keys: Iterable[str] | None = None) -> TaskVector:
        """delta = finetuned − base in float32, over ``keys`` (default: all floating keys).

        Without ``keys`` both dicts must hold the same key set; integer buffers are left
        out. Missing keys, non-floating entries or shape mismatches raise ValueError.
        """
        if keys is None:
            _check_same_keys(finetuned, base, "from_state_dicts")
            keys = [k for k, v in finetuned.items() if v.is_floating_point() or base[k].is_floating_point()]
        keys = list(keys)
        missing = [k for k in keys if k not in finetuned or k not in base]
        if missing:
            raise ValueError(f"keys missing from finetuned or base: [{_names(missing)}]")
        for k in keys:
            ft, b = finetuned[k], base[k]
            if not (ft.is_floating_point() and b.is_floating_point()) or ft.shape != b.shape:
                raise ValueError(f"{k}: need floating tensors of one shape, got {ft.dtype}{tuple(ft.shape)} "
                                 f"and {b.dtype}{tuple(b.shape)}")
        # Computed in float32 on the device of the fine-tuned weights: the base (a pre-step
        # snapshot) may live elsewhere -- host memory while the weights are on a GPU --
        # and is brought over one tensor at a time.
        return cls({k: finetuned[k].detach().float() - base[k].detach().to(finetuned[k].device).float()
                    for k in keys})

    @classmethod
    def from_models(cls, finetuned: nn.Module, base: nn.Module) -> TaskVector:
        """Task vector between two models of the same architecture."""
        return cls.from_state_dicts(finetuned.state_dict(), base.state_dict())

    def items(self) -> list[tuple[str, Tensor]]:
        return list(self._m.items())

    def __add__(self, other: object) -> TaskVector:
        if isinstance(other, _Vector) and not isinstance(other, TaskVector):
            other = other.to_dense()  # a LoraTaskVector
        if not isinstance(other, TaskVector):
            return NotImplemented
        _check_same_keys(self._m, other._m, "TaskVector addition")
        for k, v in self._m.items():
            if v.shape != other[k].shape:
                raise ValueError(f"{k}: shape mismatch {tuple(v.shape)} vs {tuple(other[k].shape)}")
        return TaskVector({k: v + other[k] for k, v in self._m.items()})

    def __mul__(self, c: object) -> TaskVector:
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        # add_(0.0) turns -0.0 into +0.0 so negated vectors stay sparse on disk
        return TaskVector({k: (v * float(c)).add_(0.0) for k, v in self._m.items()})

    def mul_(self, c: float) -> TaskVector:
        """``self * c`` in place (the same bytes as ``*``), for a vector whose tensors no one else
        holds -- a step's fresh change: taking it at 1B then holds one float32 copy of the
        weights, not two."""
        for v in self._m.values():
            v.mul_(float(c)).add_(0.0)
        return self

    def apply_to(self, target: Target, scale: float = 1.0, report: RoundingReport | None = None) -> Target:
        """Add ``scale``·delta to ``target`` (model or state dict) in place.

        The sum is formed in float32 and stored in the target's dtype: exact to float32
        for float32 weights, rounded for half-precision ones (see :class:`RoundingReport`).
        """
        return _apply(target, self.keys(), lambda n: self._m[n] * float(scale), report)

    def norm(self) -> float:
        """Global L2 norm, each tensor reduced in float64."""
        return math.sqrt(sum(float(torch.linalg.vector_norm(v, dtype=torch.float64)) ** 2 for v in self._m.values()))

    def nbytes_stored(self) -> int:
        """Tensor payload bytes :meth:`save` writes (sparse where smaller; header excluded)."""
        total = 0
        for v in self._m.values():
            nnz, n = int((v.reshape(-1).view(torch.int32) != 0).sum()), v.numel()
            total += nnz * ((4 if n < 2**31 else 8) + 4) if _sparse_pays(nnz, n) else n * 4
        return total

    def _tensors(self) -> Iterator[Tensor]:
        return iter(self._m.values())

    def _payload(self) -> tuple[dict[str, Tensor], dict]:
        tensors: dict[str, Tensor] = {}
        sparse: dict[str, list[int]] = {}
        for k, v in self._m.items():
            _encode(k, v, tensors, sparse)
        return tensors, {"sparse": sparse}

    @classmethod
    def _from_payload(cls, tensors: dict[str, Tensor], fmt: dict) -> TaskVector:
        return cls({k: _decode(k, tensors, fmt.get("sparse", {})) for k in fmt["keys"]})
