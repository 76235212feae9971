"""``sampled``: any-of-k extraction -- k samples per prompt at temperature T and top-p.

Greedy decoding shows one path; a user (or an extraction attack) can draw many. Per
window, ``k`` continuations are sampled and two values kept: ``probe:sampled`` is the
best sample's ROUGE-L (the worst case for the rights holder), ``probe:sampled-extracted``
is 1 when any sample reaches ``threshold`` -- its mean over a book is the share of
windows extractable in k tries (Carlini et al.'s k-extractability, with ROUGE-L in place
of exact match so a near-verbatim sample counts). Draws are seeded with the run's seed
and the step, so a rerun samples the same continuations on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssu.errors import SSUError
from ssu.eval.generation import Sampling, generate_continuations
from ssu.eval.probes import PROBES, Probe, ProbeContext, Score, rouge_l


@PROBES.register("sampled", outputs={"probe:sampled": True, "probe:sampled-extracted": False},
                 description="k samples per prompt (temperature, top-p); best ROUGE-L and any-of-k extraction")
class Sampled(Probe):
    @dataclass
    class Args:
        k: int = 8
        temperature: float = 0.8
        top_p: float = 0.95
        threshold: float = 0.5  # a sample at or above this ROUGE-L counts as extracted
        # sequences per generation batch; None: eval.batch_size. Larger is not faster on a CPU
        # (demo world, k = 8 x 20 windows: 5.5 s at 32, 10.7 s at 256, benchmarks/probe_cost.py's run)
        batch_size: int | None = None

        def __post_init__(self) -> None:
            if self.k < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or not 0 <= self.threshold <= 1 \
                    or (self.batch_size is not None and self.batch_size < 1):
                raise SSUError("sampled: k >= 1, temperature > 0, top_p in (0, 1], threshold in [0, 1], "
                               "batch_size >= 1")

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        a = self.args
        repeated = [w for w in ctx.windows for _ in range(a.k)]
        torch.manual_seed(ctx.seed)
        batch = a.batch_size or ctx.config.eval.batch_size
        outputs = generate_continuations(model, tokenizer, repeated, batch_size=batch,
                                         max_length=ctx.config.train.max_length, progress=ctx.progress,
                                         tokens_per_batch=ctx.config.eval.tokens_per_batch,
                                         sampling=Sampling(a.temperature, a.top_p))
        out = []
        for i, w in enumerate(ctx.windows):
            values = [rouge_l(o, w["continuation"]) for o in outputs[i * a.k:(i + 1) * a.k]]
            best = max(values)
            out.append(Score("probe:sampled", w["set"], w["book"], w["window"], best,
                             {"sample": values.index(best)}))
            out.append(Score("probe:sampled-extracted", w["set"], w["book"], w["window"],
                             float(best >= a.threshold)))
        return out
