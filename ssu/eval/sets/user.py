"""User-supplied evaluation sets: prompt/continuation pairs from JSON lines files.

``eval.extra_sets`` maps a set name to a path, or to ``{path: ..., goal: ...}``::

    eval:
      extra_sets:
        paraphrased: {path: extra/paraphrased/, goal: forget}
        news: extra/news.jsonl            # goal None: reported, counted in no group

The path is one ``.jsonl`` file or a directory of them. Each line is
``{"prompt": ..., "continuation": ..., "book": ...}``; ``book`` defaults to the
file's stem. Reported book names are ``<set>/<book>``, so a paraphrase of a
scheduled book never collides with the book itself. A relative path is read from
the current directory (as ``model`` and ``data`` are); the files are read when the
config is validated and at every evaluation, so they may grow between steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssu.errors import SSUError
from ssu.eval.sets.base import GOALS, EvalSet, SetContext


def _spec(name: str, spec: Any) -> tuple[Path, str | None]:
    if isinstance(spec, str):
        return Path(spec), None
    if isinstance(spec, dict) and set(spec) <= {"path", "goal"} and isinstance(spec.get("path"), str):
        return Path(spec["path"]), spec.get("goal")
    raise SSUError(f"eval.extra_sets.{name} must be a path or {{path: ..., goal: ...}}, got {spec!r}")


def _files(name: str, path: Path) -> list[Path]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise SSUError(f"eval.extra_sets.{name}: {path} is not a .jsonl file or a directory holding some")
    return files


def check_spec(name: str, spec: Any) -> None:
    """Fail in one line on a bad spec, a bad goal, a missing path or a malformed line."""
    path, goal = _spec(name, spec)
    if goal not in GOALS:
        raise SSUError(f"eval.extra_sets.{name}: goal must be forget, keep, unseen or null, got {goal!r}")
    read_rows(name, path)


def read_rows(name: str, path: Path) -> list[dict]:
    rows: list[dict] = []
    for f in _files(name, path):
        count: dict[str, int] = {}
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SSUError(f"{f}:{lineno} is not valid JSON: {e.msg}") from e
            if not (isinstance(r, dict) and isinstance(r.get("prompt"), str)
                    and isinstance(r.get("continuation"), str) and r["prompt"].strip()):
                raise SSUError(f"{f}:{lineno} needs string fields prompt (non-empty) and continuation")
            book = f"{name}/{r.get('book') or f.stem}"
            rows.append({"book": book, "role": "extra", "step": None, "window": count.get(book, 0),
                         "prompt": r["prompt"], "continuation": r["continuation"]})
            count[book] = count.get(book, 0) + 1
    return rows


def user_set(name: str, spec: Any) -> EvalSet:
    path, goal = _spec(name, spec)

    def select(ctx: SetContext) -> list[dict]:
        return read_rows(name, path)

    return EvalSet(name, select, goal, name, f"user set from {path}")
