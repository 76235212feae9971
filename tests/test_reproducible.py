"""Plain ``ssu`` (and a baseline) stay bit-identical as protection is added around them.

The digests below were recorded with the code as it stood before the regularizer slot
gained loss terms and gradient hooks (commit 38ab3ec), on this test world (torch
2.13.0 CPU, the pinned constraints). Regularizers, calibration and the stable recipe
must be opt-in: with none configured, every byte of the memorized model and of the
step vectors is what it was. A deliberate change of the numerics (or a torch
upgrade through ``.ci/refresh-constraints``) re-records them, and says why in its commit.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from ssu.run import RunDir
from ssu.step import run_step
from ssu.vectors import load_vector

MEMORIZED = "77fff658c89ea2f7f3dec6efeb2e8cf88a67f7408d4f71eabba781ab85b3befe"
VECTORS = {
    "ssu": ["2e749845b8d83e301b7f3eba6e705fb2888ca335668d8ef17c8d1050e5b823fa",
            "47c8b8e653c6278642075e8135269f366d02045b1bb1fd9c9692750b9f8e3dfd"],
    "ga": ["56fa1add21b44ef399527f7adba50de0cd557ca6fd5e5577362343d5b3b07110",
           "ad0f8090b693545ffd85e4ca12a819c948a27cd19b98cfc033980bf362cde1ea"],
}


def _digest(vector) -> str:
    d = hashlib.sha256()
    for k in sorted(vector.keys()):
        d.update(k.encode())
        d.update(vector[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return d.hexdigest()


def test_the_memorized_model_is_byte_identical(synthetic_world):
    files = sorted(synthetic_world.memorized.glob("*.safetensors"))
    assert hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest() == MEMORIZED


@pytest.mark.parametrize("method", sorted(VECTORS))
def test_steps_without_regularizers_are_bit_identical_to_before(run_dir, method):
    run = run_dir(method=method, name=method)
    for t, expected in enumerate(VECTORS[method], start=1):
        run_step(run, t, progress=False)
        assert _digest(load_vector(RunDir(run).vector_path(t))[0]) == expected, f"{method} step {t} changed"
