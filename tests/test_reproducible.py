"""Reruns give the same bytes on one machine; stored references hold on any CPU within a tolerance.

What torch promises, and so what is tested:

- **On one machine** (same kernels, threads and versions), a step is a deterministic
  function of its inputs: two runs write byte-identical vectors, and protection that
  is not configured changes nothing -- the ``ssu-stable`` preset with its regularizers
  and calibration switched off writes plain ``ssu``'s bytes.
- **Across machines** bytes are not promised: a CPU's kernels (AVX2 vs AVX-512), the
  thread count and a torch patch release change the last bits of a matmul, and
  training amplifies them (a memorized model trained from scratch differs by ~4 %
  between ``ATEN_CPU_CAPABILITY=avx2`` and ``avx512``). So the stored reference starts
  from weights drawn with NumPy's PCG64 (the same on every platform) rather than a
  trained model, and the steps' vectors are compared through per-tensor norms and a
  fixed random projection, to a relative tolerance of 1e-4 of each tensor's norm.
  Measured spread between ``default``, ``avx2`` and ``avx512`` kernels and 1 vs 2
  threads on this world: ≤ 2e-5 (``ga``) and ≤ 5e-7 (``ssu``) of a tensor's norm.

Re-record the references after a deliberate change of the numerics (and say why in the
commit): ``python tests/test_reproducible.py --record``.
"""

from __future__ import annotations

import copy
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from ssu.recipes.init import init_run
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.vectors import load_vector

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference_vectors.json"
TOLERANCE = 1e-4  # of each tensor's norm
METHODS = ("ssu", "ga")
STEPS = (1, 2)
SETTINGS = {"device": "cpu", "train": {"finetune": "full", "lr": 1e-3, "epochs": 2, "batch_size": 2, "grad_accum": 1},
            "eval": {"enabled": False}}


def sketch(vector) -> dict[str, list[float]]:
    """Per tensor: its norm and its dot product with a fixed unit vector (seeded by the name)."""
    out = {}
    for k in sorted(vector.keys()):
        v = vector[k].double().numpy().ravel()
        probe = np.random.default_rng(zlib.crc32(k.encode())).standard_normal(v.size)
        out[k] = [float(np.linalg.norm(v)), float(v @ (probe / np.linalg.norm(probe)))]
    return out


def reference_world(root: Path) -> tuple[Path, Path]:
    """A synthetic corpus, a nano Llama with its BPE tokenizer, and weights N(0, 0.02) from PCG64."""
    import torch
    from safetensors.torch import load_file, save_file

    from data_prep import prepare_books, write_synthetic_corpus
    from ssu.models.tiny import make_tiny_model

    corpus, prepared, model = root / "corpus", root / "prepared", root / "model"
    write_synthetic_corpus(corpus, n_books=3, seed=0, words_per_book=240, n_retain=1, n_heldout=1)
    prepare_books(corpus, prepared, prompt_words=20, continuation_words=20)
    make_tiny_model(prepared, model, arch="llama", size="nano")
    weights = load_file(model / "model.safetensors")
    rng = np.random.default_rng(0)
    drawn = {k: torch.from_numpy(rng.normal(0, 0.02, size=tuple(t.shape)).astype(np.float32)) if t.dim() >= 2
             else t.clone() for k, t in sorted(weights.items())}
    save_file(drawn, model / "model.safetensors", metadata={"format": "pt"})
    return model, prepared


def step_sketches(root: Path) -> dict[str, dict[str, list[float]]]:
    model, prepared = reference_world(root)
    out = {}
    for method in METHODS:
        run = root / method
        init_run(run, {**copy.deepcopy(SETTINGS), "method": method, "model": str(model), "data": str(prepared)})
        for t in STEPS:
            run_step(run, t, progress=False)
            out[f"{method}/{t}"] = sketch(load_vector(RunDir(run).vector_path(t))[0])
    return out


def test_steps_agree_with_the_stored_references(tmp_path):
    stored = json.loads(REFERENCE.read_text())
    got = step_sketches(tmp_path)
    assert got.keys() == stored.keys()
    for key, tensors in stored.items():
        assert got[key].keys() == tensors.keys(), key
        for name, (norm, proj) in tensors.items():
            g_norm, g_proj = got[key][name]
            scale = TOLERANCE * max(norm, 1e-12)
            assert abs(g_norm - norm) <= scale and abs(g_proj - proj) <= scale, (key, name, g_norm, norm, g_proj, proj)


@pytest.mark.parametrize("method", METHODS)
def test_two_runs_write_identical_bytes(run_dir, method):
    runs = [run_dir(method=method, name=f"{method}{i}") for i in range(2)]
    for t in STEPS:
        a, b = (RunDir(r).vector_path(t).read_bytes() if run_step(r, t, progress=False) else None for r in runs)
        assert a == b, f"{method} step {t}"


def test_protection_not_configured_changes_nothing(run_dir):
    """The preset with its regularizers and calibration off is plain ssu, bit for bit (its file
    differs only in the method named in its header)."""
    import torch

    plain = run_dir(name="plain")
    bare = run_dir(method="ssu-stable", name="bare", regularizers=[], calibrate={"enabled": False})
    for t in STEPS:
        run_step(plain, t, progress=False)
        run_step(bare, t, progress=False)
        a, b = (load_vector(RunDir(r).vector_path(t))[0] for r in (plain, bare))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a.keys()), f"step {t}"


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(step_sketches(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"recorded {REFERENCE}")
