"""Load an ssu_cloze task's items from the file next to its YAML (not the current directory)."""

from __future__ import annotations

import json
from pathlib import Path


def load(data_file: str = "ssu_cloze.jsonl", **_):
    """{"test": Dataset} of the JSON lines file ``data_file``, resolved next to this module."""
    import datasets

    path = Path(__file__).resolve().parent / data_file
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval task data {path} is missing; write it with "
                                f"experiments/lm_eval/make_cloze.py")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
