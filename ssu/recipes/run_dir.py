"""The run directory: the only state of a sequential-unlearning run, and the only code
(with the other recipes) that knows its layout.

Layout::

    RUN_DIR/config.json          resolved config, seed, library versions, base-model hash
    RUN_DIR/manifest.json        completed steps (books, hyperparameters, artifacts + sha256, timings)
    RUN_DIR/step_T/vector.safetensors   the vector added at step T (its metadata inside)
    RUN_DIR/step_T/step.json     training statistics of step T

Each step directory is written to a temporary directory and renamed into place;
the manifest is updated last. A step that is in the manifest is complete; a step
directory without a manifest entry is debris from a crash and is replaced.

The manifest is also the takedown log: every record in it -- a step's entry, or an
event such as re-weighting a step of the stack -- carries a sequence number, the
sha256 of the record written before it (the first: of ``config.json``) and its own
sha256, so ``ssu audit --verify`` finds a record edited, removed or re-ordered after
the fact (:meth:`RunDir.verify_chain`). Records written by an earlier release carry no
digests and are reported as such.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ssu.config import RunConfig, load
from ssu.errors import SSUError
from ssu.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, sha256_file
from ssu.recipes.migrate import is_legacy, migrate, notice

CONFIG = "config.json"
MANIFEST = "manifest.json"
VECTOR = "vector.safetensors"
RESULTS = "results.jsonl"


class RunDir:
    """Typed access to a run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise SSUError(f"{self.path} is not a run directory (no {CONFIG}); create it with `ssu init`")
        record = read_json(self.path / CONFIG)
        self.record = record
        config = record["config"]
        if is_legacy(record):
            config = migrate(config)
            notice(self.path)
        self.config = load(RunConfig, config, where=str(self.path / CONFIG))
        if is_legacy(record):  # fill the args of blocks 0.1 did not have, as `ssu init` would today
            from ssu.recipes.components import resolve

            self.config = resolve(self.config)

    # --- paths -------------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.path / f"step_{step}"

    def vector_path(self, step: int) -> Path:
        return self.step_dir(step) / VECTOR

    # --- manifest ----------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        return read_json(path) if path.is_file() else {"steps": {}}

    def completed_steps(self) -> list[int]:
        return sorted(int(s) for s in self.manifest["steps"])

    def step_record(self, step: int) -> dict[str, Any]:
        try:
            return self.manifest["steps"][str(step)]
        except KeyError:
            raise SSUError(f"step {step} is not complete in {self.path}") from None

    def record_step(self, step: int, entry: dict[str, Any]) -> None:
        manifest = self.manifest
        manifest["steps"][str(step)] = chained(entry, manifest, self.path / CONFIG)
        atomic_write_json(self.path / MANIFEST, manifest)

    def record_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append an event (a re-weighting of the stack) to the log; return it as recorded."""
        manifest = self.manifest
        event = chained(event, manifest, self.path / CONFIG)
        manifest.setdefault("events", []).append(event)
        atomic_write_json(self.path / MANIFEST, manifest)
        return event

    def events(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("events", []))

    def effective_alphas(self) -> dict[int, float]:
        """Each completed step's α as the stack applies it now: recorded, then re-weighted by events."""
        manifest = self.manifest
        alphas = {int(s): e["alpha"] for s, e in manifest["steps"].items()}
        for ev in sorted(manifest.get("events", []), key=lambda e: e.get("seq", 0)):
            if ev.get("kind") == "reweight" and ev["step"] in alphas:
                alphas[ev["step"]] = ev["alpha"]
        return alphas

    def config_digest(self) -> str:
        """sha256 of the resolved config (canonical JSON), as each step records it."""
        return hashlib.sha256(canonical(self.record["config"])).hexdigest()

    def verify_chain(self) -> int:
        """Check every record's digest and link; return how many carry one. Raise naming the first break."""
        manifest = self.manifest
        records = [(f"step {s}", e) for s, e in manifest["steps"].items()] + \
                  [(f"event {i + 1} ({e.get('kind', '?')} of step {e.get('step', '?')})", e)
                   for i, e in enumerate(manifest.get("events", []))]
        records = [(name, r) for name, r in records if "entry_sha256" in r]
        records.sort(key=lambda nr: nr[1]["seq"])
        previous = sha256_file(self.path / CONFIG) if (self.path / CONFIG).is_file() else None
        for i, (name, r) in enumerate(records):
            if r["seq"] != i + 1:
                raise SSUError(f"{self.path / MANIFEST}: the log is missing a record before {name}")
            if record_digest(r) != r["entry_sha256"]:
                raise SSUError(f"{self.path / MANIFEST}: {name} was changed after it was recorded")
            if r["previous_sha256"] != previous:
                what = CONFIG if i == 0 else "the record before it"
                raise SSUError(f"{self.path / MANIFEST}: {name} does not follow {what} (changed or re-ordered)")
            previous = r["entry_sha256"]
        return len(records)

    def drop_from(self, step: int) -> list[int]:
        """Forget step ``step`` and every later one (manifest first, then files)."""
        dropped = [s for s in self.completed_steps() if s >= step]
        manifest = self.manifest
        cutoff = min((manifest["steps"][str(s)].get("seq", 0) for s in dropped), default=None)
        for s in dropped:
            del manifest["steps"][str(s)]
        if "events" in manifest:
            # events on a dropped step, and any recorded after the first dropped step (made on a
            # stack that held it), go with them: the log stays an unbroken prefix of itself
            manifest["events"] = [e for e in manifest["events"] if e.get("step", 0) < step
                                  and (cutoff is None or e.get("seq", 0) < cutoff)]
        atomic_write_json(self.path / MANIFEST, manifest)
        results = self.path / RESULTS
        if results.is_file():  # evaluation rows of dropped steps are stale too
            atomic_write_jsonl(results, [r for r in read_jsonl(results) if r["step"] < step])
        for d in self.path.glob("step_*"):
            suffix = d.name.split("_", 1)[1]
            if suffix.isdigit() and int(suffix) >= step:
                shutil.rmtree(d, ignore_errors=True)
        return dropped

    def check_ready(self, step: int) -> None:
        """Step T may run only when 1..T-1 are complete."""
        if step < 1:
            raise SSUError(f"time steps start at 1 (got {step})")
        done = set(self.completed_steps())
        missing = [s for s in range(1, step) if s not in done]
        if missing:
            raise SSUError(f"step {step} needs steps 1..{step - 1} complete first; missing: "
                           + ", ".join(map(str, missing)))

    def verify_artifacts(self, step: int) -> None:
        """Raise if a completed step's vector is missing or altered since it was recorded."""
        entry = self.step_record(step)
        path = self.vector_path(step)
        if not path.is_file():
            raise SSUError(f"{path} is missing; re-run `ssu step {self.path} {step} --force`")
        if sha256_file(path) != entry["artifacts"][VECTOR]["sha256"]:
            raise SSUError(f"{path} does not match its sha256 in the manifest")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a log record without its own digest."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "entry_sha256"})).hexdigest()


def chained(record: dict[str, Any], manifest: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``record`` with its place in the log: the next sequence number, the digest of the
    last record (of ``config.json`` for the first), and its own digest."""
    log = [r for r in list(manifest["steps"].values()) + manifest.get("events", []) if "entry_sha256" in r]
    last = max(log, key=lambda r: r["seq"], default=None)
    out = {k: v for k, v in record.items() if k not in ("seq", "previous_sha256", "entry_sha256")}
    out["seq"] = last["seq"] + 1 if last else 1
    out["previous_sha256"] = last["entry_sha256"] if last else sha256_file(config_path)
    out["entry_sha256"] = record_digest(out)
    return out


def model_fingerprint(name_or_path: str) -> str:
    """sha256 over a local model directory's weight files (or the hub id itself)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"hub:{name_or_path}"
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
