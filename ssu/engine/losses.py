"""Loss pieces shared by the unlearning methods.

A micro-batch packs every row a method needs into one padded tensor -- learning
pairs, random-label pairs, retain pairs -- with a ``group`` id per row, so a single
forward and a single backward serve the whole loss. Labels are ``-100`` on prompt
and padding positions, so every loss covers continuation tokens only. With
``share_prompts`` the batch also carries its rows grouped by prompt, and
:func:`forward_nll` forwards each distinct prompt once (see :mod:`ssu.engine.prefix`).

A micro-batch may be forwarded in chunks to bound activation memory. Every loss
is a sum of per-token or per-row terms over a group's total, so a chunk carries
the *whole micro-batch's* totals (``Batch.norm``) and divides by them: the chunks'
losses, and their gradients, then add up exactly to the unchunked ones.

The packed path evaluates the LM head only where a loss is counted: with a
128k-token vocabulary the logits (and their float32 copy for the cross-entropy)
are the largest activation of a 7-8B model's forward, and prompt positions --
about half of every row -- carry no loss. Prompts come first in every row, so
every counted target lies at or after the batch's first labelled column, and
models that take ``logits_to_keep`` compute logits for the last positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssu.engine.encoding import IGNORE_INDEX, Encoded, collate
from ssu.engine.prefix import SharedPrompts, _forward_params, group_by_prompt, shared_prompt_nll

LEARN, RANDOM, RETAIN, ROLLOUT = 0, 1, 2, 3  # ROLLOUT: the model's own continuation of a forget prompt
Row = tuple[Encoded, int]  # an encoded pair and its group


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    group: torch.Tensor  # (rows,) LEARN / RANDOM / RETAIN / ROLLOUT
    shared: SharedPrompts | None = None  # the same rows grouped by prompt, for the shared-prompt path
    # group -> (counted tokens, rows) of the whole micro-batch when this batch is a chunk of it
    norm: dict[int, tuple[int, int]] | None = None
    # First column holding a label in any row (the shortest prompt, as prompts come
    # first); derived from ``labels`` when not given, and carried by ``to`` so it is
    # read on the host, not synchronised from the device.
    label_start: int | None = None

    def __post_init__(self) -> None:
        if self.label_start is None:
            labelled = (self.labels != IGNORE_INDEX).any(0).nonzero()
            self.label_start = int(labelled[0]) if len(labelled) else self.labels.size(1)

    def to(self, device) -> Batch:
        tensors = (self.input_ids, self.attention_mask, self.labels, self.group)
        return Batch(*(t.to(device) for t in tensors), shared=self.shared, norm=self.norm,
                     label_start=self.label_start)

    def has(self, group: int) -> bool:
        return bool((self.group == group).any())

    def rows_in(self, group: int) -> int:
        """Rows of ``group`` in the whole micro-batch (the denominator of a per-row mean)."""
        return self.norm.get(group, (0, 0))[1] if self.norm is not None else int((self.group == group).sum())


def group_totals(rows: list[Row]) -> dict[int, tuple[int, int]]:
    """Per group: counted tokens and rows, as ``token_nll`` / ``shared_prompt_nll`` count them."""
    totals: dict[int, tuple[int, int]] = {}
    for e, g in rows:
        tokens, n = totals.get(g, (0, 0))
        totals[g] = (tokens + e.n_counted, n + 1)
    return totals


def make_batch(rows: list[Row], pad_id: int, share_prompts: bool = False,
               norm: dict[int, tuple[int, int]] | None = None) -> Batch:
    """Pack ``(encoded pair, group)`` rows; labels start at each row's continuation.

    ``norm``: the totals of the whole micro-batch (:func:`group_totals`) when ``rows``
    are one chunk of it.
    """
    enc = collate([e.ids for e, _ in rows], [e.n_prompt for e, _ in rows], pad_id)
    shared = group_by_prompt([e for e, _ in rows], pad_id) if share_prompts else None
    return Batch(enc["input_ids"], enc["attention_mask"], enc["labels"],
                 torch.tensor([g for _, g in rows], dtype=torch.long), shared, norm)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the next token, and the mask of counted tokens.

    Position i predicts token i+1; positions whose target label is ``-100`` count zero.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.clamp(min=0).reshape(-1), reduction="none"
    ).view_as(target)
    return nll * mask, mask


def group_mean_nll(nll: torch.Tensor, mask: torch.Tensor, batch: Batch, g: int) -> torch.Tensor:
    """Mean NLL over the counted tokens of the rows in group ``g`` (0 if none); over the
    whole micro-batch's tokens when ``batch`` is a chunk of it."""
    rows = batch.group == g
    count = batch.norm.get(g, (0, 0))[0] if batch.norm is not None else mask[rows].sum()
    if count == 0 or not rows.any():
        return nll.new_zeros(())
    return nll[rows].sum() / count


def group_row_mean(values: torch.Tensor, batch: Batch, g: int) -> torch.Tensor:
    """Mean of per-row ``values`` (the rows of group ``g``, in order) over the micro-batch's rows."""
    n = batch.rows_in(g)
    return values.sum() / n if n else values.new_zeros(())


def sequence_logprob(nll: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of continuation log-probabilities per selected row."""
    return -nll[rows].sum(dim=1)


def forward_nll(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and mask of every row; shared-prompt layout when the batch and model allow."""
    if batch.shared is not None:
        s = batch.shared
        out = shared_prompt_nll(model, s.prompts, s.continuations, s.prompt_index, s.pad_id)
        if out is not None:
            return out
    return packed_nll(model, batch)


def labelled_logits(model, batch: Batch, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's logits from the position that predicts the batch's first label on,
    ``(rows, width - skipped, vocab)``: ``logits_to_keep`` where the forward takes it (an
    int keeps the LAST positions), every position otherwise. With ``params`` (name -> tensor,
    some of the model's parameters), the forward runs with those in their place
    (``torch.func.functional_call``: gradients reach whatever the tensors were computed from)."""
    width = batch.input_ids.size(1)
    first = max(min(batch.label_start, width) - 1, 0)
    keep = {"logits_to_keep": width - first} if first > 0 and "logits_to_keep" in _forward_params(model) else {}
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **keep}
    return (model(**kwargs) if params is None else torch.func.functional_call(model, params, (), kwargs)).logits


def packed_nll(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll` of the packed rows, laid out by position ``(rows, width - 1)``,
    with the LM head evaluated only from the first position that predicts a label.

    The logit at position i predicts token i + 1, so the first needed one sits at
    ``label_start - 1``; ``logits_to_keep = width - that`` (an int keeps the LAST
    positions). The columns before it are zeros outside the mask, exactly what
    :func:`token_nll` gives there. Models whose forward lacks ``logits_to_keep``
    return every position and are aligned the same way.
    """
    width = batch.input_ids.size(1)
    logits = labelled_logits(model, batch)
    skipped = width - logits.size(1)  # what the model actually kept (all, if it ignored the argument)
    nll, mask = token_nll(logits, batch.labels[:, skipped:])
    if skipped == 0:
        return nll, mask
    return F.pad(nll, (skipped, 0)), F.pad(mask, (skipped, 0))


def log_rest(logs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logs)) over the last dimension: the probability mass outside the given
    outcomes, the bucket of a top-k distribution (``kl``'s cached reference, ``suppress``'s target)."""
    return torch.log1p(-logs.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
