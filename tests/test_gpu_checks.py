"""``benchmarks/gpu_checks.py`` runs end to end at its CPU size, so the GPU session's one command is not
run for the first time on the GPU. Every check must pass and the table must name each one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.py"


def test_gpu_checks_run_at_cpu_size(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--size", "cpu", "--budget", "1500"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu_checks.json").read_text())["rows"]
    assert [r["check"] for r in rows] == ["step-1b-lora", "step-1b-full", "memory-1b", "bf16-stack",
                                          "generation-8b", "step-8b-lora", "pretrain-36m", "generation-1b-fp32",
                                          "step-1b-lora-shared"]
    assert all(r["status"] == "ok" for r in rows), [(r["check"], r["result"]) for r in rows if r["status"] != "ok"]
    table = (tmp_path / "gpu_checks.md").read_text()
    assert table.count("| ok |") == 9
    memory = next(r for r in rows if r["check"] == "memory-1b")["data"]
    assert [r["component"] for r in memory["rows"]] == ["ssu (plain, full)", "protect"]
    assert memory["rows"][1]["state"] == pytest.approx(2.0, abs=0.01)  # one bf16 Fisher
    stack = next(r for r in rows if r["check"] == "bf16-stack")["data"]
    assert stack["precision"]["stack"] == "adapter" and len(stack["rel_error"]) == 2
