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
"""

from __future__ import annotations

import hashlib
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
        manifest["steps"][str(step)] = entry
        atomic_write_json(self.path / MANIFEST, manifest)

    def drop_from(self, step: int) -> list[int]:
        """Forget step ``step`` and every later one (manifest first, then files)."""
        dropped = [s for s in self.completed_steps() if s >= step]
        manifest = self.manifest
        for s in dropped:
            del manifest["steps"][str(s)]
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
