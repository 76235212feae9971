"""On-policy rollouts for suppression: decode the model's own continuations, flag the book in them,
and build the bounded target a flagged token is trained toward.

The pieces ``suppress`` (ssu/methods/suppress.py) puts together when ``rollout_every`` > 0: the
greedy or sampled decodes of the step's forget prompts (:func:`rollout`), the n-gram test that marks
a decoded token as the book's (:func:`book_flags`, with :func:`word_joins` to leave the pieces of
words alone), the book's own next token after a decoded run (:func:`book_next`,
:func:`book_targets`), and -- for ``rollout_loss: kl`` -- the distribution a flagged position is
trained toward (:func:`flagged_targets`): the model's own next-token distribution at that decoded
context with the flagged token taken out, and the pieces that would glue onto the word before
down-weighted.

Why a target and not only unlikelihood: −log(1 − p(token)) says where probability must leave, not
where it goes; on real books the freed mass landed on word-continuation pieces and rare-word
fragments every book shares ("but" decoded as "butent4" in another book after four steps,
experiments/deep), and extrapolated by α that spread into text the step never saw. At the
decoding model the KL to the target equals the unlikelihood term exactly (KL(q ‖ p) = −log(1 − p(t))
when q is p without t), so the two differ only in what they hold fixed once training moves: the
target pins every other candidate's odds where they were when the model decoded.

Written here because no kept library flags a model's own decodes against a book's n-grams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssu.engine.encoding import Encoded
from ssu.engine.losses import IGNORE_INDEX, ROLLOUT, log_rest, make_batch


def ngrams(rows: list[Encoded], n: int) -> set[tuple[int, ...]]:
    """Every run of ``n`` consecutive token ids in ``rows``."""
    return {tuple(e.ids[j - n : j]) for e in rows for j in range(n, len(e.ids) + 1)}


def slid(e: Encoded, k: int) -> Encoded:
    """The window read ``k`` tokens later: the prompt drops its first k tokens and takes the
    continuation's first k (at least one continuation token is left)."""
    k = min(k, len(e.continuation_ids) - 1)
    return Encoded(ids=e.ids[k:], n_prompt=e.n_prompt) if k > 0 else e


def book_flags(ids: list[int], start: int, book: set[tuple[int, ...]], n: int,
               generic: set[tuple[int, ...]] = frozenset(), k: int = 0,
               joins: tuple[set[int], set[int]] | None = None) -> list[bool]:
    """For each token ``ids[start:]``: does it complete one of the ``book``'s n-grams -- and, with
    ``k``, is its own run of k tokens absent from ``generic`` (the retain rows' k-grams)? With
    ``joins`` (:func:`word_joins`), a token that continues the word before it is never flagged."""
    return [j + 1 >= n and tuple(ids[j + 1 - n : j + 1]) in book
            and not (k and tuple(ids[j + 1 - k : j + 1]) in generic)
            and not (joins and j > 0 and ids[j] in joins[0] and ids[j - 1] in joins[1])
            for j in range(start, len(ids))]


def word_joins(tokenizer) -> tuple[set[int], set[int]]:
    """(ids whose text begins with a letter or digit, ids whose text ends with one): a token of
    the first set after one of the second continues a word ("ism" after " milit").

    Why word starts only: a small vocabulary splits rare words into pieces every book shares,
    and training a piece down where the book has it took the same pieces out of other books'
    words (Gutenberg: "militarism" decoded as "midations" after four steps, experiments/deep).
    The first piece of a word is where a continuation leaves the book."""
    text = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    return ({i for i, t in text.items() if t[:1].isalnum()}, {i for i, t in text.items() if t[-1:].isalnum()})


def book_next(book: set[tuple[int, ...]], generic: set[tuple[int, ...]], k: int) -> dict[tuple[int, ...], list[int]]:
    """Each book n-gram's first n − 1 tokens -> the tokens the book puts after them (those whose
    own last k tokens no retain row has, with ``k``)."""
    out: dict[tuple[int, ...], list[int]] = {}
    for g in book:
        if not (k and g[-k:] in generic):
            out.setdefault(g[:-1], []).append(g[-1])
    return out


def book_targets(ids: list[int], start: int, nxt: dict[tuple[int, ...], list[int]], n: int) -> list[int]:
    """For each token ``ids[start:]``: the token the book puts after the n − 1 tokens before it
    (the smallest id where it has several), or −1 where they are not one of its runs."""
    return [min(nxt.get(tuple(ids[j + 1 - n : j]), [-1])) if j + 1 >= n else -1 for j in range(start, len(ids))]


@torch.no_grad()
def rollout(model, prompts: list[list[int]], budgets: list[int], pad_id: int, batch_size: int = 16,
            temperature: float | None = None) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (left-padded batches), each cut to its budget; with
    ``temperature``, sampled from the whole distribution (torch's global generator).

    Not ``ssu.eval.generation``: methods sit below the evaluation stage, and this needs none
    of its budgeting -- one short decode of one step's windows."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(prompts), batch_size):
        part, budget = prompts[b : b + batch_size], max(budgets[b : b + batch_size])
        width = max(map(len, part))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in part], device=device)
        gen = model.generate(input_ids=ids, attention_mask=(torch.arange(width, device=device) >=
                             torch.tensor([width - len(p) for p in part], device=device)[:, None]).long(),
                             max_new_tokens=budget, min_new_tokens=budget, pad_token_id=pad_id,
                             **({"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                                if temperature else {"do_sample": False}))[:, width:].tolist()
        out += [g[:n] for g, n in zip(gen, budgets[b : b + batch_size])]
    model.train(was_training)
    return out




@torch.no_grad()
def flagged_targets(model, rows: list[Encoded], flags: list[torch.Tensor], pad_id: int, k: int,
                    joins: tuple[set[int], set[int]] | None = None, run_on_weight: float = 1.0,
                    batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per rollout row, at its flagged positions (``flags``: one bool per continuation token): the
    model's next-token distribution with the flagged token taken out, as (ids of its top k, int32),
    (log q of those k and of the rest, float32) and (the flagged tokens, int64) -- the layout
    ``suppress``'s cached teacher uses, so the same KL over k + 2 outcomes reads it.

    With ``run_on_weight`` < 1 (``joins`` from :func:`word_joins`), where the flagged token begins
    a word and the token before it ends with a letter or digit, every candidate that would continue
    that word instead has its odds multiplied by the weight before renormalising: the freed mass
    goes to the next word, not to a piece glued onto this one. Computed in float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts = ends = None
    if joins is not None and run_on_weight < 1:
        vocab = model.get_output_embeddings().weight.shape[0]
        starts = torch.zeros(vocab, dtype=torch.bool, device=device)
        starts[[i for i in joins[0] if i < vocab]] = True
        ends = joins[1]
    out = []
    for b in range(0, len(rows), batch_size):
        part = rows[b : b + batch_size]
        batch = make_batch([(r, ROLLOUT) for r in part], pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        labels = batch.labels[:, 1:]
        for i, f in enumerate(flags[b : b + batch_size]):
            pos = (labels[i] != IGNORE_INDEX).nonzero().flatten()[f.to(device)]
            lg, tok = logits[i, pos], labels[i, pos]
            if starts is not None:
                prev = batch.input_ids[i, pos]  # the token before the flagged one (logits[j] predicts j + 1)
                glue = torch.tensor([p in ends and t not in joins[0] for p, t in zip(prev.tolist(), tok.tolist())],
                                    dtype=torch.bool, device=device)
                lg = lg + math.log(run_on_weight) * (glue[:, None] & starts[None, :])
            logq = F.log_softmax(lg.scatter(-1, tok[:, None], float("-inf")), -1)
            top, ids = logq.topk(min(k, logq.shape[-1] - 1), -1)
            out.append((ids.to(torch.int32).cpu(), torch.cat([top, log_rest(top)], -1).cpu(), tok.cpu()))
    model.train(was_training)
    return out
