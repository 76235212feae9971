"""Seeds and deterministic kernels: the same run gives the same bytes in every process.

Seeding alone is not enough. Prompt sharing (``ssu/engine/prefix.py``) gathers each
prompt's logits and KV cache once per continuation row (``x[idx]`` with repeated
indices); the backward of that gather accumulates with ``index_put_``, whose default
parallel CPU kernel adds in thread-schedule order. Measured on the demo run: three
`ssu step` processes with identical inputs wrote three different vectors (thousands
of saliency-mask entries flipped), one thread or deterministic kernels made them
identical. So runs ask torch for deterministic algorithms (``warn_only``: an op that
has none warns instead of failing a run) and, for CUDA, the cuBLAS workspace setting
that makes its matmuls repeatable. ``deterministic: false`` in the run config trades
this for speed where a GPU kernel's deterministic variant is slower.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; select deterministic kernels unless asked not to."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # Read by cuBLAS when its handle is created; harmless on a CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
