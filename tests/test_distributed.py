"""Two processes under torchrun (gloo on the CPU) make the same step as one process.

This is the path `accelerate launch` takes on several GPUs: each process works on its
share of the micro-batches, gradients are summed before the saliency mask, and only
the main process writes. The stored vector must match the single-process one up to
float summation order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ssu.step import run_step
from ssu.vectors import load_vector


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_processes_match_one(run_dir, tmp_path):
    single = run_dir(name="single", train={"grad_accum": 2})
    double = run_dir(name="double", train={"grad_accum": 2})
    run_step(single, 1, progress=False)
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "ssu.cli", "step", str(double), "1",
         "--no-eval"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, _ = load_vector(single / "step_1" / "vector.safetensors")
    b, _ = load_vector(double / "step_1" / "vector.safetensors")
    assert set(a.keys()) == set(b.keys())
    assert max(float((a[k] - b[k]).abs().max()) for k in a.keys()) < 1e-6
    assert abs(a.norm() - b.norm()) < 1e-6 * max(a.norm(), 1.0)
    manifest = json.loads((double / "manifest.json").read_text())
    assert list(manifest["steps"]) == ["1"]  # written once, by the main process
