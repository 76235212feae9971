"""Reading a vector file of either kind (dense or LoRA), by the ``kind`` in its header."""

from __future__ import annotations

from pathlib import Path

from ssu.vectors.lora_vector import LoraTaskVector
from ssu.vectors.task_vector import TaskVector, _read_header, _Vector


def load_vector(path: str | Path) -> tuple[_Vector, dict]:
    """Load whichever vector kind the file holds (its format ``kind``); returns (vector, metadata)."""
    fmt, _ = _read_header(path)
    return (LoraTaskVector if fmt["kind"] == "lora" else TaskVector).load(path)
