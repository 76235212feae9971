"""Two processes under ``accelerate launch`` (gloo on the CPU) make the one-process step, with DDP and FSDP.

This is the path a multi-GPU run takes: each process works on its share of every
optimizer step's windows, DDP (or FSDP2's ``fully_shard``) reduces the gradients in the
step's last backward, the saliency mask is taken from the reduced gradient -- under
FSDP from every process's statistics, each process masking its own shard -- and only
the main process writes. The stored vector must match the single-process one up to
float summation order -- also when a group has fewer windows than processes (one
process then joins the reduction with a zero-weighted backward). Under FSDP the
pre-step snapshot is kept per shard: the main process holds about half the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssu.recipes.step import run_step
from ssu.vectors import load_vector

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "accelerate"
ACCELERATE = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")


def train_lr(run: Path) -> float:
    return json.loads((run / "config.json").read_text())["config"]["train"]["lr"]


@pytest.mark.parametrize("kind, train", [("ddp", {"grad_accum": 2}), ("ddp", {"batch_size": 1, "grad_accum": 1}),
                                         ("fsdp", {"grad_accum": 2})],
                         ids=["ddp-two-windows-each", "ddp-one-window-per-step", "fsdp"])
@pytest.mark.skipif(not os.path.exists(ACCELERATE), reason="accelerate's launcher not installed")
def test_two_processes_match_one(run_dir, kind, train, tmp_path, free_port):
    single = run_dir(name="single", train=train)
    double = run_dir(name="double", train=train)
    run_step(single, 1, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The shipped config (a multi-process launch); on a machine without GPUs ssu's
    # processes form a gloo group on the CPU.
    proc = subprocess.run(
        [ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{kind}.yaml"), "--num_processes", "2",
         "--dynamo_backend", "no", "--main_process_port", str(free_port),
         "-m", "ssu.cli", "step", str(double), "1", "--no-eval"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, _ = load_vector(single / "step_1" / "vector.safetensors")
    b, _ = load_vector(double / "step_1" / "vector.safetensors")
    assert set(a.keys()) == set(b.keys())
    # Summation order differs (two processes reduce their halves): entries agree to 1e-6,
    # except where a gradient sits at float-noise level -- Adam divides it by its own root
    # mean square, so noise in its last bits becomes an lr-sized difference (seen under
    # OMP_NUM_THREADS=1: 1 entry in 40k). Such entries are allowed at 1 in 10^4, bounded by lr.
    entries = sum(a[k].numel() for k in a.keys())
    off = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a.keys())
    assert off <= max(1, entries // 10_000), f"{off} of {entries} entries differ by more than 1e-6"
    assert max(float((a[k] - b[k]).abs().max()) for k in a.keys()) <= train_lr(double) * 2
    assert abs(a.norm() - b.norm()) < 1e-4 * max(a.norm(), 1.0)
    manifest = json.loads((double / "manifest.json").read_text())
    assert list(manifest["steps"]) == ["1"]  # written once, by the main process
    ran = manifest["steps"]["1"]["processes"]
    assert ran["kind"] == kind and ran["world"] == 2
    share = ran["snapshot_bytes"] / ran["float32_bytes"]
    assert (0.45 < share < 0.55) if kind == "fsdp" else share == 1.0  # FSDP: this process's shards only
    losses = [json.loads((r / "step_1" / "step.json").read_text())["train"]["losses"] for r in (single, double)]
    assert [x["loss"] for x in losses[1]] == pytest.approx([x["loss"] for x in losses[0]], rel=1e-5)
