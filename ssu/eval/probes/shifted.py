"""``shifted``: the prompt as a user would vary it, not as it was trained.

Unlearning tuned on one exact prompt can leave the text reachable from a slightly
different one. Per window, the model continues each variant greedily and the worst
case (max ROUGE-L over variants) is the window's score:

- ``tail``: the prompt cut to its last ``tail_words`` words;
- ``earlier``: the prompt minus its last ``shift_words`` words, which move to the head
  of the reference (the continuation starts earlier in the text);
- ``later``: the prompt plus the continuation's first ``shift_words`` words, which
  leave the reference (it starts later);
- ``lower``: prompt lower-cased;
- ``spaces``: whitespace normalised (runs of spaces and newlines to one space).

Each variant's reference is the text that truly follows it, so a perfect memorizer
scores 1.0 on every variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssu.errors import SSUError
from ssu.eval.generation import generate_continuations
from ssu.eval.probes import PROBES, Probe, ProbeContext, Score, rouge_l

VARIANTS = ("tail", "earlier", "later", "lower", "spaces")


def variant(name: str, prompt: str, continuation: str, tail_words: int, shift_words: int) -> tuple[str, str]:
    """(prompt, reference) of one variant of a window."""
    p, c = prompt.split(), continuation.split()
    if name == "tail":
        return " ".join(p[-tail_words:]), continuation
    if name == "earlier":
        k = min(shift_words, len(p) - 1)
        return " ".join(p[:-k] if k else p), " ".join(p[-k:] + c if k else c)
    if name == "later":
        k = min(shift_words, len(c) - 1)
        return " ".join(p + c[:k]), " ".join(c[k:])
    if name == "lower":
        return prompt.lower(), continuation
    if name == "spaces":
        return " ".join(p), " ".join(c)
    raise ValueError(name)


@PROBES.register("shifted", outputs={"probe:shifted": True},
                 description="greedy from varied prompts (tail, earlier, later, lower-case, spaces); max per window")
class Shifted(Probe):
    @dataclass
    class Args:
        variants: list[str] = field(default_factory=lambda: list(VARIANTS))
        tail_words: int = 20
        shift_words: int = 5

        def __post_init__(self) -> None:
            bad = [v for v in self.variants if v not in VARIANTS]
            if bad or not self.variants:
                raise SSUError(f"shifted.variants: choose from {', '.join(VARIANTS)} (got {self.variants})")
            if self.tail_words < 1 or self.shift_words < 1:
                raise SSUError("shifted: tail_words and shift_words must be >= 1")

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        a = self.args
        varied = [{"prompt": vp, "continuation": vc}
                  for w in ctx.windows for v in a.variants
                  for vp, vc in [variant(v, w["prompt"], w["continuation"], a.tail_words, a.shift_words)]]
        outputs = generate_continuations(model, tokenizer, varied, batch_size=ctx.config.eval.batch_size,
                                         max_length=ctx.config.train.max_length, progress=ctx.progress,
                                         tokens_per_batch=ctx.config.eval.tokens_per_batch)
        out, n = [], len(a.variants)
        for i, w in enumerate(ctx.windows):
            values = [rouge_l(outputs[i * n + j], varied[i * n + j]["continuation"]) for j in range(n)]
            best = max(range(n), key=lambda j: values[j])
            out.append(Score("probe:shifted", w["set"], w["book"], w["window"], values[best],
                             {"variant": a.variants[best]}))
        return out
