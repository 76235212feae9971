"""``teacher``: how much of the book the model still ranks first under its true prefix.

Greedy ROUGE-L reads what the model emits from the prompt; one early token off the book and
the rest of the continuation is the model's own text, so a low greedy score can hide a book
whose every later token is still the model's first choice behind the book's own prefix. This
probe feeds each window's true text (teacher forcing) and scores the share of its
continuation tokens that the model ranks first. A model that never saw the book ranks few
of them first (the retrain reference: 0.12–0.18 in the demo world, 0.03 on the Gutenberg
books; experiments/deep); a removal that only moved the branch tokens leaves most of them
first (0.55–0.77 of the removed book's tokens after `suppress-onpolicy` in the demo world,
where a few relearning steps on a slice of the book bring the greedy score back; 0.79–0.95
on Gutenberg, where they do not, and only this reading tells the model from one that never
saw the book). Not part of the worst case (a share of tokens, not a continuation's
ROUGE-L); read beside the never-seen level on held-out text.

One forward pass per batch of windows, no generation; the argmax is taken in the model's
dtype (a tie with the label counts as first).
"""

from __future__ import annotations

import torch

from ssu.eval.probes import PROBES, Probe, ProbeContext, Score


@torch.no_grad()
def top1_shares(model, tokenizer, windows: list[dict], max_length: int, batch_size: int = 16) -> list[float]:
    """Per window: the share of its continuation tokens that are the model's first choice given
    the window's own text before them (0 for a window whose continuation has no token)."""
    from ssu.engine.encoding import IGNORE_INDEX, collate, encode_pair

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    for b in range(0, len(windows), batch_size):
        enc = [encode_pair(tokenizer, w["prompt"], w["continuation"], max_length) for w in windows[b : b + batch_size]]
        batch = collate([e.ids for e in enc], [e.n_prompt for e in enc], tokenizer.pad_token_id)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask).logits
        labels = batch["labels"][:, 1:].to(device)
        labelled = labels != IGNORE_INDEX
        picked = logits[:, :-1].gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        first = (picked >= logits[:, :-1].amax(-1)) & labelled
        out.extend((first.sum(-1) / labelled.sum(-1).clamp(min=1)).tolist())
        del logits
    model.train(was_training)
    return out


@PROBES.register("teacher", outputs={"probe:teacher": False},
                 description="share of the continuation's tokens ranked first under the book's own prefix")
class Teacher(Probe):
    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        shares = top1_shares(model, tokenizer, ctx.windows, ctx.config.train.max_length, ctx.config.eval.batch_size)
        return [Score("probe:teacher", w["set"], w["book"], w["window"], s) for w, s in zip(ctx.windows, shares)]
