"""Shared fixtures: one small synthetic world per test session, and fresh run directories.

``synthetic_world`` builds, once, through the Python API: a synthetic corpus of three
books (one per time step) plus a retain and a held-out book -> prepared windows of
20 + 20 words -> a nano GPT-2 with a BPE tokenizer trained on the corpus -> that model
memorized to ROUGE-L >= 0.9 on every scheduled and retain book. ``run_dir`` then
creates run directories on the memorized model with small training settings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data_prep import prepare_books, write_synthetic_corpus
from ssu.config import merge
from ssu.models.tiny import make_tiny_model
from ssu.recipes.init import init_run
from ssu.recipes.memorize import MemorizeConfig, memorize

# No thread count is pinned: the suite holds under OMP_NUM_THREADS=1 and 2 and any
# ATEN_CPU_CAPABILITY, because no test compares bits across runs that could differ in
# either (tests/test_reproducible.py says what is compared, and how).

# Settings measured to memorize the 24 windows in ~35 epochs (about 2 s of CPU time);
# lr 6e-3 with batch 8 reaches ROUGE-L 1.0 on every book, 3e-3 only scrapes 0.91.
MEMORIZE = MemorizeConfig(epochs=60, lr=6e-3, batch_size=8, eval_every=5, target_rouge=0.9, device="cpu")

# Small, fast unlearning settings for tests: full fine-tune, 3 micro-batches of 2
# windows per epoch for a 6-window book, evaluation off.
RUN_DEFAULTS: dict[str, Any] = {
    "method": "ssu",
    "device": "cpu",
    "train": {"finetune": "full", "lr": 1e-3, "epochs": 2, "batch_size": 2, "grad_accum": 1},
    "eval": {"enabled": False},
}


@dataclass(frozen=True)
class SyntheticWorld:
    corpus: Path
    prepared: Path
    tiny: Path
    memorized: Path
    memorize_record: dict


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory) -> SyntheticWorld:
    root = tmp_path_factory.mktemp("world")
    corpus, prepared, tiny, memorized = (root / n for n in ("corpus", "prepared", "tiny", "memorized"))
    write_synthetic_corpus(corpus, n_books=3, seed=0, words_per_book=240, n_retain=1, n_heldout=1)
    prepare_books(corpus, prepared, prompt_words=20, continuation_words=20)
    make_tiny_model(prepared, tiny, arch="gpt2", size="nano")
    record = memorize(str(tiny), prepared, memorized, MEMORIZE, progress=False)
    scores = record["rougeL_by_book"]
    assert record["target_reached"] and min(scores.values()) >= 0.9, f"memorization too weak: {scores}"
    return SyntheticWorld(corpus, prepared, tiny, memorized, record)


@pytest.fixture(scope="session")
def init_test_run(synthetic_world) -> Callable[..., Path]:
    """A factory: ``init_test_run(path, method="ssu", **overrides)`` -> ``path``, initialised.

    ``overrides`` are config keys merged over :data:`RUN_DEFAULTS` (nested dicts merge).
    Session-scoped so module-scoped fixtures can create runs too.
    """

    def _init(path: Path, method: str = "ssu", **overrides: Any) -> Path:
        cfg = merge(copy.deepcopy(RUN_DEFAULTS), {"method": method, "model": str(synthetic_world.memorized),
                                                   "data": str(synthetic_world.prepared)})
        init_run(path, merge(cfg, overrides))
        return Path(path)

    return _init


@pytest.fixture
def run_dir(init_test_run, tmp_path) -> Callable[..., Path]:
    """A factory: ``run_dir(method="ssu", name="run", **overrides)`` -> a fresh run directory in tmp_path."""

    def _make(method: str = "ssu", name: str = "run", **overrides: Any) -> Path:
        return init_test_run(tmp_path / name, method, **overrides)

    return _make


def forget_set_of(prepared, step: int, tokenizer, *, retain: bool = False, earlier: bool = False, **kwargs):
    """The forget set ``ssu step`` builds for ``step`` of a prepared directory (kwargs: k_random,
    with_random, seed, max_length)."""
    from ssu.engine.forget_set import build_forget_set
    from ssu.recipes.step import step_windows

    books, windows, retain_rows, earlier_rows = step_windows(prepared, step)
    return build_forget_set(step, windows, tokenizer, retain=retain_rows if retain else None,
                            earlier=earlier_rows if earlier else None, books=books, **kwargs)


def make_method(name: str, **args):
    """The registered method ``name`` with ``args`` over its defaults (as a run config would give them)."""
    from ssu.config import build
    from ssu.methods import METHODS

    cls = METHODS.get(name)
    return cls(build(cls.Args, args if cls.Args else None, where=f"method {name}"))


def train_settings(**kw):
    """TrainSettings for a direct ``finetune`` call: full fine-tune, the whole micro-batch per backward."""
    from ssu.config import TrainSettings

    return TrainSettings(**{"finetune": "full", "windows_per_backward": None, "grad_accum": 1, **kw})


@pytest.fixture
def free_port() -> int:
    """A port nobody listens on, for a test's process group: a fixed one collides with a
    previous case's socket still in TIME_WAIT, or with a second test run on the machine
    (seen: gloo aborts the workers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def retain_nll(model, world) -> float:
    """Mean continuation NLL of ``world``'s retain windows under ``model`` (how much retained text moved)."""
    import torch

    from ssu.engine.losses import LEARN, forward_nll, group_mean_nll, make_batch
    from ssu.models.loading import load_tokenizer

    tok = load_tokenizer(str(world.memorized))
    fs = forget_set_of(world.prepared, 1, tok, with_random=False, retain=True)
    with torch.no_grad():
        batch = make_batch([(e, LEARN) for e in fs.retain], tok.pad_token_id)
        nll, mask = forward_nll(model, batch)
        return float(group_mean_nll(nll, mask, batch, LEARN))
